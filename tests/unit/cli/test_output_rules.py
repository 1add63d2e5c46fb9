"""Every command's outputs (issue 30): never a link, FIFO or device replaced, never an input or a run's file
overwritten, an existing file only with --overwrite, bad option ranges and unwritable folders refused,
all in one line before any work: the Keras backend is not even imported (the tests make it fail if it is)."""

from __future__ import annotations

import importlib
import os

import pandas as pd
import pytest

from covidxray.cli import main
from helpers import make_dataset, write_png


@pytest.fixture(autouse=True)
def no_backend(monkeypatch):
    """The checks run before the backend loads: importing it here fails the test."""
    cli_main = importlib.import_module("covidxray.cli.main")
    monkeypatch.setattr(cli_main, "import_keras_quietly", lambda: pytest.fail("the backend was imported before the checks"))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("covidxray: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def state(path) -> tuple:
    info = os.lstat(path)
    return info.st_mode, info.st_ino, info.st_size, info.st_mtime_ns


@pytest.fixture
def run(tmp_path):
    """A run folder's files (the checks come before anything reads them)."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "split.csv").write_text("path,split\na.png,train\n")
    (folder / "model.keras").write_text("weights")
    return folder


@pytest.fixture
def specials(tmp_path):
    (tmp_path / "real.csv").write_text("the user's")
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    (tmp_path / "null.csv").symlink_to("/dev/null")  # never opened: refused from lstat
    os.mkfifo(tmp_path / "fifo.csv")
    return [tmp_path / name for name in ("link.csv", "null.csv", "fifo.csv")]


def test_evaluate_outputs_never_replace_a_link_a_fifo_an_input_or_a_run_file(tmp_path, run, specials, capsys):
    data = make_dataset(tmp_path / "data", per_class=2)
    base = ["--quiet", "evaluate", "--run", str(run), "--data", str(data)]
    for target in specials:
        before = state(target)
        for option in ("--predictions", "--out"):
            assert main([*base, option, str(target), "--overwrite"]) == 2
            assert f"{option} {target}: is a" in one_line_error(capsys)
        assert state(target) == before
    assert (tmp_path / "real.csv").read_text() == "the user's"
    split = (run / "split.csv").read_text()
    for extra in ([], ["--overwrite"]):  # a run's file: refused even with --overwrite
        assert main([*base, "--predictions", str(run / "split.csv"), *extra]) == 2
        assert f"{run / 'split.csv'}: is inside the input {run}" in one_line_error(capsys)
    assert (run / "split.csv").read_text() == split
    assert main([*base, "--predictions", str(data / "manifest.csv"), "--overwrite"]) == 2
    assert "manifest.csv: is inside the input" in one_line_error(capsys)
    same = tmp_path / "x.csv"
    assert main([*base, "--predictions", str(same), "--out", str(tmp_path / "." / "x.csv")]) == 2
    assert "are the same file; give each its own path" in one_line_error(capsys)
    (tmp_path / "old.json").write_text("kept")
    assert main([*base, "--out", str(tmp_path / "old.json")]) == 2
    assert "old.json: exists; pass --overwrite to replace it" in one_line_error(capsys)
    assert main([*base, "--out", "/proc/x.json"]) == 2
    assert "no permission to write in /proc" in one_line_error(capsys)
    assert not same.exists() and (tmp_path / "old.json").read_text() == "kept"


@pytest.mark.parametrize("tta", ["0", "-2", "33", "1000"])
def test_tta_out_of_range_is_refused_before_the_model_loads(tmp_path, tta, capsys):
    image = write_png(tmp_path / "x.png", __import__("numpy").zeros((8, 8), "uint8"))
    for command in (["predict", str(image)], ["evaluate", "--data", str(tmp_path)]):
        assert main(["--quiet", *command, "--tta", tta]) == 2
        assert f"--tta must be a whole number of views from 1 (none) to 32; got {tta}" in one_line_error(capsys)


def test_tta_with_onnxruntime_is_refused_before_the_model_loads(tmp_path, capsys):
    image = write_png(tmp_path / "x.png", __import__("numpy").zeros((8, 8), "uint8"))
    assert main(["--quiet", "predict", str(image), "--tta", "4", "--engine", "onnxruntime"]) == 2
    assert "--tta needs the Keras model" in one_line_error(capsys)


class _Passed(BaseException):
    """Raised where the backend would load: the checks let the command through."""


def _passed():
    raise _Passed


def test_heatmaps_never_overwrite_an_input_and_need_overwrite_for_an_existing_file(tmp_path, capsys, monkeypatch):
    import numpy as np

    folder = tmp_path / "xrays"
    write_png(folder / "x.png", np.zeros((8, 8), np.uint8))
    write_png(folder / "x_gradcam.png", np.full((8, 8), 7, np.uint8))  # the user's X-ray of this name
    before = (folder / "x_gradcam.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["--quiet", "predict", str(folder), "--heatmaps", str(folder), *extra]) == 2
        assert f"--heatmaps {folder / 'x_gradcam.png'}: is also an input" in one_line_error(capsys)
    assert (folder / "x_gradcam.png").read_bytes() == before
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "x_gradcam.png").write_text("an earlier heatmap")
    assert main(["--quiet", "predict", str(folder / "x.png"), "--heatmaps", str(maps)]) == 2
    assert "x_gradcam.png: exists; pass --overwrite" in one_line_error(capsys)
    (maps / "x_gradcam.png").unlink()
    (maps / "x_gradcam.png").symlink_to(folder / "x.png")
    assert main(["--quiet", "predict", str(folder / "x.png"), "--heatmaps", str(maps), "--overwrite"]) == 2
    assert "x_gradcam.png: is a symbolic link" in one_line_error(capsys)
    (maps / "x_gradcam.png").unlink()
    (tmp_path / "maplink").symlink_to(tmp_path / "nowhere")  # a dangling link: not made a folder
    assert main(["--quiet", "predict", str(folder / "x.png"), "--heatmaps", str(tmp_path / "maplink")]) == 2
    assert "maplink: is a symbolic link" in one_line_error(capsys)
    (tmp_path / "maplink").unlink()
    (tmp_path / "maplink").symlink_to(maps)  # a link to a folder is written in (it passes the checks)
    monkeypatch.setattr(importlib.import_module("covidxray.cli.main"), "import_keras_quietly", _passed)
    with pytest.raises(_Passed):
        main(["--quiet", "predict", str(folder / "x.png"), "--heatmaps", str(tmp_path / "maplink"), "--overwrite"])
    assert main(["--quiet", "predict", str(folder / "x.png"), "--heatmaps", "/proc/maps"]) == 2
    assert "--heatmaps /proc/maps: no permission to write in /proc" in one_line_error(capsys)
    assert not os.path.exists("/proc/maps") or os.path.isfile("/proc/maps")  # nothing made there


def test_lungs_segment_never_overwrites_an_input(tmp_path, capsys):
    import numpy as np

    folder = tmp_path / "xrays"
    write_png(folder / "b.png", np.zeros((8, 8), np.uint8))
    write_png(folder / "b_overlay.png", np.full((8, 8), 9, np.uint8))  # the user's file of an output's name
    before = (folder / "b_overlay.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["--quiet", "lungs", "segment", str(folder), "--out", str(folder), *extra]) == 2
        assert f"--out {folder / 'b_overlay.png'}: is also an input" in one_line_error(capsys)
    assert (folder / "b_overlay.png").read_bytes() == before
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_lungs.png").write_text("an earlier mask")
    assert main(["--quiet", "lungs", "segment", str(folder / "b.png"), "--out", str(out)]) == 2
    assert "b_lungs.png: exists; pass --overwrite" in one_line_error(capsys)
    assert main(["--quiet", "lungs", "segment", str(folder / "b.png"), "--out", "/proc/lungs"]) == 2
    assert "no permission to write in /proc" in one_line_error(capsys)


def test_subset_never_overwrites_its_manifest_a_link_or_a_fifo(tmp_path, specials, capsys):
    data = make_dataset(tmp_path / "data", per_class=6)
    manifest = data / "manifest.csv"
    rows = manifest.read_text()
    for extra in ([], ["--overwrite"]):
        assert main(["--quiet", "data", "subset", "--data", str(manifest), "--out", str(manifest), "--per-class", "2",
                     *extra]) == 2
        assert f"--out {manifest}: is also an input" in one_line_error(capsys)
    assert manifest.read_text() == rows
    for target in specials:
        before = state(target)
        assert main(["--quiet", "data", "subset", "--data", str(data), "--out", str(target), "--overwrite"]) == 2
        assert f"--out {target}: is a" in one_line_error(capsys)
        assert state(target) == before
    out = tmp_path / "small.csv"
    out.write_text("the user's")
    assert main(["--quiet", "data", "subset", "--data", str(data), "--out", str(out), "--per-class", "2"]) == 2
    assert "small.csv: exists; pass --overwrite to replace it" in one_line_error(capsys)
    assert out.read_text() == "the user's"
    assert main(["--quiet", "data", "subset", "--data", str(data), "--out", str(out), "--per-class", "2",
                 "--overwrite"]) == 0
    assert len(pd.read_csv(out)) == 6
    assert main(["--quiet", "data", "subset", "--data", str(data), "--out", str(tmp_path / "n.csv"),
                 "--per-class", "0"]) == 2
    assert "--per-class must be at least 1 (got 0)" in one_line_error(capsys)


def test_export_out_is_checked_before_the_conversion(tmp_path, run, capsys):
    users = tmp_path / "exports"
    users.mkdir()
    (users / "notes.txt").write_text("the user's")
    for extra in ([], ["--overwrite"]):  # a folder that is not a covidxray export: never replaced
        assert main(["--quiet", "export", "--run", str(run), "--format", "savedmodel", "--out", str(users), *extra]) == 2
        assert f"--out {users}:" in one_line_error(capsys)
    assert (users / "notes.txt").read_text() == "the user's"
    assert main(["--quiet", "export", "--run", str(run), "--out", str(users)]) == 2
    assert "is a folder; give the file to write" in one_line_error(capsys)
    (tmp_path / "old.onnx").write_text("an earlier export")
    assert main(["--quiet", "export", "--run", str(run), "--out", str(tmp_path / "old.onnx")]) == 2
    assert "old.onnx: exists; pass --overwrite" in one_line_error(capsys)
    assert main(["--quiet", "export", "--run", str(run), "--out", str(run / "model.keras"), "--overwrite"]) == 2
    assert "model.keras: is inside the input" in one_line_error(capsys)
    assert main(["--quiet", "export", "--run", str(run), "--out", "/proc/x.onnx"]) == 2
    assert "no permission to write in /proc" in one_line_error(capsys)
    assert (run / "model.keras").read_text() == "weights"


def test_audit_out_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    import covidxray.data.audit as audit

    monkeypatch.setattr(audit, "audit_datasets", lambda *a, **k: pytest.fail("audited before checking --out"))
    data = make_dataset(tmp_path / "data", per_class=2)
    assert main(["--quiet", "data", "audit", "--data", str(data), "--out", "/proc/audit"]) == 2
    assert "no permission to write in /proc" in one_line_error(capsys)
    out = tmp_path / "audit"
    out.mkdir()
    os.mkfifo(out / "audit.md")
    assert main(["--quiet", "data", "audit", "--data", str(data), "--out", str(out), "--overwrite"]) == 2
    assert "audit.md: is a FIFO" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["audit.md"]
