"""covidxray.data.audit: what one or several datasets hold, on small synthetic datasets.

The synthetic X-rays are noise-dominated, so two different ones are never near-duplicates, while a
JPEG or resized copy of one is (checked first with near_duplicate_pairs itself).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from covidxray.data.audit import audit_datasets, dataset_names
from covidxray.data.duplicates import FINGERPRINT_SIDE, fingerprint_images, near_duplicate_pairs
from covidxray.data.images import resize_square
from covidxray.data.sources import confounding_warning
from covidxray.errors import CovidXrayError, DatasetError
from covidxray.reports.audit_report import AUDIT_FILES, AUDIT_JSON, AUDIT_SHEET, check_out, write_audit
from helpers import synthetic_xray, write_png

#: alpha's sources: COVID from one hospital, normal and pneumonia from another (as DarkCovidNet).
ALPHA_SOURCES = {"covid": "hosp-c", "normal": "hosp-n", "pneumonia": "hosp-n"}


def _alpha(root, per_class: int = 3, seed: int = 0):
    """A manifest dataset with patient ids; returns its folder and its images by name."""
    rng = np.random.default_rng(seed)
    rows, images = ["path,label,patient_id,source"], {}
    for label, source in ALPHA_SOURCES.items():
        for i in range(per_class):
            name = f"{label}/{label}_{i}.png"
            images[name] = write_png(root / name, synthetic_xray(label, rng))
            rows.append(f"{name},{label},{label}-p{i},{source}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root, images


def _class_folders(root, counts: dict[str, int], seed: int = 1):
    """Class folders (no manifest: no patient ids; the source is the folder's name)."""
    rng = np.random.default_rng(seed)
    for label, count in counts.items():
        for i in range(count):
            write_png(root / label / f"{label}_{i}.png", synthetic_xray(label, rng))
    return root


def _jpeg_copy(source, target):
    """``source`` re-encoded as JPEG: other pixels, the same picture."""
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(source).save(target, quality=90)
    return target


def _resized_copy(source, target, side: int = 56):
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(source).resize((side, side), Image.Resampling.LANCZOS).save(target)
    return target


def _pair_datasets(tmp_path):
    """alpha (manifest) and beta (class folders) with: a JPEG copy of an alpha COVID image filed as
    normal in beta (a near-duplicate across datasets, with a label conflict), a byte copy of an alpha
    normal image (identical, across), a resized copy of a beta pneumonia image (near, within beta)
    and a corrupt PNG."""
    alpha, images = _alpha(tmp_path / "alpha")
    beta = _class_folders(tmp_path / "beta", {"covid": 2, "normal": 2, "pneumonia": 2})
    jpeg = _jpeg_copy(images["covid/covid_0.png"], beta / "normal" / "from_alpha.jpg")
    shutil.copy(images["normal/normal_1.png"], beta / "normal" / "same_as_alpha.png")
    resized = _resized_copy(beta / "pneumonia" / "pneumonia_0.png", beta / "pneumonia" / "pneumonia_0_small.png")
    corrupt = beta / "pneumonia" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image")
    return alpha, beta, {"jpeg": jpeg, "resized": resized, "corrupt": corrupt, **{f"alpha/{k}": v for k, v in images.items()}}


def test_the_synthetic_copies_are_near_duplicates_and_different_images_are_not(tmp_path):
    alpha, beta, files = _pair_datasets(tmp_path)
    paths = sorted(p for p in [*alpha.rglob("*.png"), *beta.rglob("*.png"), *beta.rglob("*.jpg")] if p != files["corrupt"])
    prints = fingerprint_images(np.stack([resize_square(np.asarray(Image.open(p).convert("L")), FINGERPRINT_SIDE)
                                          for p in paths]))
    found = {frozenset((paths[a].name, paths[b].name)) for a, b in near_duplicate_pairs(prints)[["a", "b"]].to_numpy()}
    assert found == {frozenset(("covid_0.png", "from_alpha.jpg")), frozenset(("pneumonia_0.png", "pneumonia_0_small.png")),
                     frozenset(("normal_1.png", "same_as_alpha.png"))}  # the identical copy pairs too


def test_audit_of_two_datasets(tmp_path):
    alpha, beta, files = _pair_datasets(tmp_path)
    result = audit_datasets([str(alpha), str(beta)], cache_dir=tmp_path / "cache")
    assert json.loads(json.dumps(result)) == result  # JSON-able as it is
    assert result["data"] == [str(alpha), str(beta)]
    assert result["datasets"] == {
        str(alpha): {"name": "alpha", "folder": str(alpha.resolve()), "images": 9,
                     "classes": {"covid": 3, "normal": 3, "pneumonia": 3}, "patients": 9, "without_patient_id": 0,
                     "sources": {"hosp-c": 3, "hosp-n": 6}, "unreadable": 0},
        str(beta): {"name": "beta", "folder": str(beta.resolve()), "images": 10,
                    "classes": {"covid": 2, "normal": 4, "pneumonia": 4}, "patients": 0, "without_patient_id": 10,
                    "sources": {"beta": 10}, "unreadable": 1},
    }
    assert result["sources"] == {
        "beta": {"images": 10, "classes": {"covid": 2, "normal": 4, "pneumonia": 4}, "datasets": ["beta"],
                 "measure": "covid-auc", "held_out": True, "why_not": None},
        "hosp-c": {"images": 3, "classes": {"covid": 3}, "datasets": ["alpha"], "measure": "sensitivity",
                   "held_out": True, "why_not": None},
        "hosp-n": {"images": 6, "classes": {"normal": 3, "pneumonia": 3}, "datasets": ["alpha"],
                   "measure": "specificity", "held_out": True, "why_not": None},
    }
    assert result["confounding"] == {"classes": {"covid": ["beta", "hosp-c"], "normal": ["beta", "hosp-n"],
                                                 "pneumonia": ["beta", "hosp-n"]},
                                     "single_source": {}, "own_source": {}, "sentence": None, "warning": None}

    record = {"alpha_covid": {"path": str(files["alpha/covid/covid_0.png"].resolve()), "dataset": "alpha", "label": "covid"},
              "jpeg": {"path": str(files["jpeg"].resolve()), "dataset": "beta", "label": "normal"},
              "pneumonia": {"path": str((beta / "pneumonia" / "pneumonia_0.png").resolve()), "dataset": "beta",
                            "label": "pneumonia"},
              "resized": {"path": str(files["resized"].resolve()), "dataset": "beta", "label": "pneumonia"}}
    exact = result["exact_duplicates"]
    assert exact["groups"] == [{"images": [
        {"path": str(files["alpha/normal/normal_1.png"].resolve()), "dataset": "alpha", "label": "normal"},
        {"path": str((beta / "normal" / "same_as_alpha.png").resolve()), "dataset": "beta", "label": "normal"}],
        "across": True, "labels_differ": False}]
    assert (exact["images"], exact["across"], exact["within"]) == (2, 1, 0)
    assert exact["elsewhere"] == {"alpha": {"images": 1, "classes": {"normal": 1}},
                                  "beta": {"images": 1, "classes": {"normal": 1}}}

    near = result["near_duplicates"]
    assert [(p["a"], p["b"], p["across"], p["labels_differ"]) for p in near["pairs"]] == [
        (record["alpha_covid"], record["jpeg"], True, True),  # the label conflict first
        (record["pneumonia"], record["resized"], False, False)]
    assert all(p["detail"] >= 0.75 and 0 <= p["phash"] <= 6 and p["layout"] > 0.9 for p in near["pairs"])
    assert (near["within"], near["across"]) == (1, 1)
    assert near["elsewhere"] == {"alpha": {"images": 1, "classes": {"covid": 1}},
                                 "beta": {"images": 1, "classes": {"normal": 1}}}
    assert result["label_conflicts"] == [{"kind": "near-duplicate", "a": record["alpha_covid"], "b": record["jpeg"],
                                          "across": True}]
    corrupt = str(files["corrupt"].resolve())
    assert list(result["unreadable"]) == [corrupt] and result["unreadable"][corrupt].startswith(f"{corrupt}: ")
    assert result["rule"] == {"strong_detail": 0.75, "weak_detail": 0.35, "layout": 0.93, "phash": 6,
                              "candidate_layout": 0.9}
    assert result["seconds"] >= 0
    assert result["verdict"] == [
        "COVID comes from 2 sources (beta, hosp-c), normal from 2 (beta, hosp-n) and pneumonia from 2 (beta, hosp-n).",
        "Held-out-source evaluation is possible for: beta (COVID AUC), hosp-c (sensitivity), hosp-n (specificity).",
        "beta: no patient id for 10 of 10 images; a split cannot keep one patient's X-rays together there.",
        "1 image of alpha and 1 of beta have an identical copy (same decoded pixels) in another dataset: combining "
        "these datasets counts each once.",
        "1 image of alpha and 1 of beta are near-duplicates of images in other datasets; 1 pair disagrees on the "
        "label: combining these datasets counts each once and leaves the conflicting pair out.",
        "Within a dataset: 1 near-duplicate pair in beta; splits keep copies together.",
        "1 file could not be decoded (listed under unreadable): training skips it.",
    ]


def test_one_dataset_whose_classes_each_come_from_one_source(tmp_path):
    alpha, _ = _alpha(tmp_path / "alpha")
    result = audit_datasets(str(alpha), cache_dir=tmp_path / "cache")
    assert result["sources"]["hosp-c"] == {"images": 3, "classes": {"covid": 3}, "datasets": ["alpha"],
                                           "measure": "sensitivity", "held_out": False,
                                           "why_not": "the other sources hold no COVID images"}
    assert result["sources"]["hosp-n"]["measure"] == "specificity"
    assert result["sources"]["hosp-n"]["why_not"] == "the other sources hold only COVID images"
    confounding = result["confounding"]
    assert confounding["classes"] == {"covid": ["hosp-c"], "normal": ["hosp-n"], "pneumonia": ["hosp-n"]}
    assert confounding["single_source"] == {"covid": "hosp-c", "normal": "hosp-n", "pneumonia": "hosp-n"}
    assert confounding["own_source"] == {"covid": ["hosp-c"]}  # hosp-n holds two classes
    labels = ["covid"] * 3 + ["normal"] * 3 + ["pneumonia"] * 3
    assert confounding["warning"] == confounding_warning(labels, ["hosp-c"] * 3 + ["hosp-n"] * 6)
    assert confounding["warning"].startswith("Labels are confounded with the source: every covid image comes from hosp-c")
    assert result["verdict"] == [
        "COVID comes from 1 source (hosp-c), normal from 1 (hosp-n) and pneumonia from 1 (hosp-n).",
        "Every class comes from a single source (COVID only from hosp-c; normal and pneumonia only from hosp-n): the "
        "classes are confounded with the source, so a model can score well by recognising the source instead of the "
        "disease, and held-out-source evaluation is not possible.",
        "No identical or near-duplicate images were found.",
    ]
    assert result["exact_duplicates"]["groups"] == [] and result["near_duplicates"]["pairs"] == []
    assert result["label_conflicts"] == [] and result["unreadable"] == {}


def test_held_out_source_evaluation_possible_for_some_sources_only(tmp_path):
    alpha, _ = _alpha(tmp_path / "alpha")
    beta = _class_folders(tmp_path / "beta", {"normal": 2, "pneumonia": 2})
    result = audit_datasets([str(alpha), str(beta)], cache_dir=tmp_path / "cache")
    assert {s: (v["measure"], v["held_out"]) for s, v in result["sources"].items()} == {
        "beta": ("specificity", True), "hosp-c": ("sensitivity", False), "hosp-n": ("specificity", True)}
    assert result["confounding"]["single_source"] == {"covid": "hosp-c"}
    assert result["verdict"][:4] == [
        "COVID comes from 1 source (hosp-c), normal from 2 (beta, hosp-n) and pneumonia from 2 (beta, hosp-n).",
        "COVID comes only from hosp-c: for it a model can learn the source instead of the disease.",
        "Held-out-source evaluation is possible for: beta (specificity), hosp-n (specificity).",
        "It is not possible for: hosp-c (the other sources hold no COVID images).",
    ]


def test_a_dataset_of_one_source(tmp_path):
    gamma = _class_folders(tmp_path / "gamma", {"covid": 2, "normal": 2})
    result = audit_datasets([str(gamma)], cache_dir=tmp_path / "cache")
    assert result["sources"]["gamma"] == {"images": 4, "classes": {"covid": 2, "normal": 2}, "datasets": ["gamma"],
                                          "measure": "covid-auc", "held_out": False,
                                          "why_not": "no other source to train on"}
    assert result["confounding"]["own_source"] == {} and result["confounding"]["warning"] is None
    assert result["verdict"][:3] == [
        "COVID comes from 1 source (gamma) and normal from 1 (gamma).",
        "All images come from one source (gamma): the source column cannot show whether a class comes from "
        "hospitals of its own; held-out-source evaluation is not possible.",
        "gamma: no patient id for 4 of 4 images; a split cannot keep one patient's X-rays together there.",
    ]


def test_identical_images_with_two_labels_within_a_dataset_are_a_label_conflict(tmp_path):
    gamma = _class_folders(tmp_path / "gamma", {"covid": 2, "normal": 2})
    shutil.copy(gamma / "covid" / "covid_0.png", gamma / "normal" / "copy.png")
    result = audit_datasets([str(gamma)], cache_dir=tmp_path / "cache")
    group = result["exact_duplicates"]["groups"]
    assert [(g["across"], g["labels_differ"], [r["label"] for r in g["images"]]) for g in group] == [
        (False, True, ["covid", "normal"])]
    assert result["near_duplicates"]["pairs"] == []  # identical pairs are listed once, as identical
    assert [(c["kind"], c["across"]) for c in result["label_conflicts"]] == [("identical", False)]
    assert result["verdict"][-2:] == [
        "Within a dataset: 1 group of identical images in gamma; splits keep copies together.",
        "1 pair of copies within one dataset disagrees on the label: training leaves it out.",
    ]


def test_missing_or_repeated_datasets_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder; check the --data path"):
        audit_datasets([str(tmp_path / "nowhere")], cache_dir=tmp_path / "cache")
    alpha, _ = _alpha(tmp_path / "alpha")
    with pytest.raises(DatasetError, match="a dataset is named twice; name each --data once"):
        audit_datasets([str(alpha), str(alpha)], cache_dir=tmp_path / "cache")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="no class folders, manifest.csv or metadata.csv"):
        audit_datasets([str(tmp_path / "flat")], cache_dir=tmp_path / "cache")


def test_dataset_names():
    assert dataset_names(["data/alpha", "x/beta/manifest.csv", "y/list.csv", "z/alpha/"]) == {
        "data/alpha": "data/alpha", "x/beta/manifest.csv": "beta", "y/list.csv": "list", "z/alpha/": "z/alpha/"}


def test_write_audit_writes_the_files_and_refuses_a_foreign_folder(tmp_path):
    alpha, beta, _ = _pair_datasets(tmp_path)
    result = audit_datasets([str(alpha), str(beta)], cache_dir=tmp_path / "cache")
    out = tmp_path / "audit"
    assert write_audit(result, out) == out / "audit.md"
    assert sorted(p.name for p in out.iterdir()) == sorted(AUDIT_FILES)
    assert json.loads((out / AUDIT_JSON).read_text()) == result
    assert Image.open(out / AUDIT_SHEET).format == "PNG"
    assert "## Near-duplicates" in (out / "audit.md").read_text() and f"]({AUDIT_SHEET})" in (out / "audit.md").read_text()

    # An earlier audit is replaced; a sheet with pairs no longer found goes with it.
    empty = {**result, "near_duplicates": {**result["near_duplicates"], "pairs": [], "within": 0, "across": 0,
                                           "elsewhere": {}}}
    write_audit(empty, out)
    assert not (out / AUDIT_SHEET).exists() and json.loads((out / AUDIT_JSON).read_text()) == empty

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CovidXrayError, match=r"not empty and not an audit folder \(holds notes.txt\); choose a new or "
                                             "empty --out, or pass --overwrite"):
        write_audit(result, foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    write_audit(result, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / AUDIT_JSON).is_file()


def test_check_out(tmp_path):
    check_out(tmp_path / "new" / "audit")  # may be created
    (tmp_path / "file").write_text("x")
    with pytest.raises(CovidXrayError, match="is a file, not a folder; choose another --out"):
        check_out(tmp_path / "file")
    half = tmp_path / "half"  # an audit killed before audit.json: only its own files
    half.mkdir()
    (half / "audit.md").write_text("# partial")
    check_out(half)


def test_the_audit_reads_each_file_once_through_the_cache(tmp_path, monkeypatch):
    alpha, _ = _alpha(tmp_path / "alpha", per_class=2)
    first = audit_datasets(str(alpha), cache_dir=tmp_path / "cache")
    import covidxray.data.cache as cache

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "decode_resized", fail)
    again = audit_datasets(str(alpha), cache_dir=tmp_path / "cache")
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}



def test_images_named_after_an_earlier_datasets_original_are_counted(tmp_path):
    rng = np.random.default_rng(5)
    for name, originals in (("first", ["a.jpeg", "b.jpeg", "c.jpeg"]), ("second", ["A.png", "b.PNG", "z.png"])):
        root = tmp_path / name
        rows = ["path,label,original_name,source"]
        for k, original in enumerate(originals):
            write_png(root / "covid" / f"{k}.png", synthetic_xray("covid", rng))
            rows.append(f"covid/{k}.png,covid,{original},{name}")
        for k in range(2):
            write_png(root / "normal" / f"{k}.png", synthetic_xray("normal", rng))
            rows.append(f"normal/{k}.png,normal,,{name}")
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    result = audit_datasets([str(tmp_path / "first"), str(tmp_path / "second")], cache_dir=tmp_path / "cache")
    assert result["same_original_name"] == {"second": 2}  # A.png and b.PNG; names without one never match
    assert ("2 images of second have the original file name of an image of an earlier dataset (re-cropped copies "
            "among them, which the pixels do not show): combining these datasets counts each once.") in result["verdict"]
