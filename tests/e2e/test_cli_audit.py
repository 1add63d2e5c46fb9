"""``covidxray data audit`` on the command line: the files it writes, the verdict it prints, the
--out it refuses, and DarkCovidNet's confounding on the real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from covidxray.cli import main
from helpers import make_dataset, shared_data_dir, synthetic_xray, write_png

AUDIT_FILES = ["audit.html", "audit.json", "audit.md", "near_duplicates.png"]


@pytest.fixture
def two_datasets(tmp_path):
    """``first`` (manifest, one source for every class) and ``second`` (class folders) holding a JPEG
    copy of a ``first`` COVID image filed as normal: a near-duplicate across datasets with a label conflict."""
    first = make_dataset(tmp_path / "first", per_class=3)
    second = tmp_path / "second"
    rng = np.random.default_rng(5)
    for label in ("covid", "normal"):
        for i in range(3):
            write_png(second / label / f"{i}.png", synthetic_xray(label, rng))
    Image.open(first / "covid" / "covid_000.png").save(second / "normal" / "copy.jpg", quality=90)
    return first, second


def _audit(*args: str) -> int:
    return main(["--quiet", "data", "audit", *args])


def test_audit_writes_its_files_and_prints_the_verdict(two_datasets, tmp_path, capsys):
    first, second = two_datasets
    out = tmp_path / "out"
    assert _audit("--data", str(first), "--data", str(second), "--out", str(out)) == 0
    printed = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == AUDIT_FILES
    result = json.loads((out / "audit.json").read_text())
    lines = printed.out.splitlines()
    assert lines[:-1] == [f"- {sentence}" for sentence in result["verdict"]]
    assert lines[-1].startswith("Audit (") and lines[-1].endswith(f" s): {out / 'audit.md'}")
    assert lines[:3] == [
        "- COVID comes from 2 sources (second, synthetic), normal from 2 (second, synthetic) and pneumonia from 1 "
        "(synthetic).",
        "- pneumonia comes only from synthetic: for it a model can learn the source instead of the disease.",
        "- Held-out-source evaluation is possible for: second (COVID AUC), synthetic (COVID AUC).",
    ]
    assert ("- 1 image of first and 1 of second are near-duplicates of images in other datasets; 1 pair disagrees on "
            "the label: combining these datasets counts each once and leaves the conflicting pair out.") in lines
    assert [(c["a"]["dataset"], c["a"]["label"], c["b"]["dataset"], c["b"]["label"]) for c in result["label_conflicts"]] == [
        ("first", "covid", "second", "normal")]
    assert (out / "near_duplicates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "audit.md").read_text()
    assert "## Label conflicts" in report and "`covid/covid_000.png` (first, covid)" in report
    assert "data:image/png;base64," in (out / "audit.html").read_text()  # the sheet, inlined
    assert printed.err == ""


def test_audit_refuses_a_folder_of_other_files(two_datasets, tmp_path, capsys):
    first, _ = two_datasets
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert _audit("--data", str(first), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err == (f"covidxray: error: {out}: not empty and not an audit folder (holds notes.txt); choose a new or "
                   "empty --out, or pass --overwrite to write into it\n")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert _audit("--data", str(first), "--out", str(out), "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "audit.json").is_file()
    assert _audit("--data", str(first), "--out", str(out)) == 0  # an audit folder: audited again in place
    # One dataset without copies: no pairs, so no contact sheet.
    assert sorted(p.name for p in out.iterdir()) == ["audit.html", "audit.json", "audit.md", "notes.txt"]


def test_audit_default_out_and_bad_data(two_datasets, tmp_path, monkeypatch, capsys):
    first, _ = two_datasets
    monkeypatch.chdir(tmp_path)
    assert _audit("--data", str(first)) == 0
    assert (tmp_path / "audit" / "audit.json").is_file()
    capsys.readouterr()
    assert _audit("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "never")) == 2
    err = capsys.readouterr().err
    assert err == f"covidxray: error: {tmp_path / 'missing'}: no such file or folder; check the --data path\n"
    assert not (tmp_path / "never").exists()


def test_audit_of_darkcovidnet_finds_every_class_confounded_with_its_source(tmp_path, capsys):
    data = shared_data_dir() / "darkcovidnet"
    out = tmp_path / "audit"
    assert _audit("--data", str(data), "--out", str(out)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "- COVID comes from 1 source (ieee8023), normal from 1 (nih-chestxray8) and pneumonia from 1 (nih-chestxray8).",
        "- Every class comes from a single source (COVID only from ieee8023; normal and pneumonia only from "
        "nih-chestxray8): the classes are confounded with the source, so a model can score well by recognising the "
        "source instead of the disease, and held-out-source evaluation is not possible.",
    ]
    result = json.loads((out / "audit.json").read_text())
    assert result["datasets"][str(data)] | {"folder": None} == {
        "name": "darkcovidnet", "folder": None, "images": 1124, "classes": {"covid": 124, "normal": 500, "pneumonia": 500},
        "patients": 764, "without_patient_id": 0, "sources": {"ieee8023": 124, "nih-chestxray8": 1000}, "unreadable": 0}
    assert {s: (v["measure"], v["held_out"]) for s, v in result["sources"].items()} == {
        "ieee8023": ("sensitivity", False), "nih-chestxray8": ("specificity", False)}
    assert result["confounding"]["single_source"] == {"covid": "ieee8023", "normal": "nih-chestxray8",
                                                      "pneumonia": "nih-chestxray8"}
    assert result["unreadable"] == {} and result["near_duplicates"]["across"] == 0
