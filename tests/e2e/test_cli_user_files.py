"""The command line with the user's own and hostile files (issue 12, 1, 2, 5 and 7): a folder that is
not a run is left alone, a finished run survives a replacement that fails, and a bad file, name,
cache entry or run file ends in one line that names it and says the fix, never a traceback."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from covidxray.cli import main
from helpers import make_dataset


@pytest.fixture
def data(tmp_path, tiny_model, fast_bootstrap):
    return make_dataset(tmp_path / "data", per_class=8)


def train(data, out, *extra) -> int:
    return main(["--quiet", "train", "--data", str(data), "--out", str(out), "--model", "tiny", "--epochs", "1",
                 "--batch-size", "8", *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("covidxray: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def contents(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_into_a_users_folder_deletes_nothing(data, tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    for name in (".env.tmpl", "config.json", "report.md", "report.html", "history.csv", "notes.txt"):
        (out / name).write_text(f"the user's {name}")
    (out / ".build.tmp_files").mkdir()
    (out / ".build.tmp_files" / "cache.o").write_text("the user's build")
    before = contents(out)
    assert train(data, out) == 2
    assert "project: not empty and not a covidxray run" in one_line_error(capsys)
    assert contents(out) == before


def test_overwrite_with_weights_that_do_not_fit_keeps_the_finished_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data, out) == 0
    finished = contents(out)
    weights = tmp_path / "other.weights.h5"
    weights.write_bytes(b"not an HDF5 file")
    assert train(data, out, "--overwrite", "--weights", str(weights)) == 2
    assert "other.weights.h5: weights do not fit model 'tiny'" in one_line_error(capsys)
    assert contents(out) == finished


def test_a_file_name_that_is_not_utf8_is_one_line(data, tmp_path, capsys):
    source = next((data / "covid").glob("*.png"))
    with open(os.fsencode(data / "covid") + b"/Bild \xe4.png", "wb") as file:  # as an archive made on Windows holds
        file.write(source.read_bytes())
    (data / "manifest.csv").unlink()  # the class folders are read
    assert train(data, tmp_path / "run") == 2
    err = one_line_error(capsys)
    assert "covid/Bild \\xe4.png: the file name is not valid UTF-8" in err and "convmv" in err
    assert not (tmp_path / "run").exists()


def test_a_corrupt_cache_entry_is_decoded_again(data, tmp_path, caplog):
    cache = tmp_path / "cache"
    assert train(data, tmp_path / "first", "--cache-dir", str(cache)) == 0
    for npy in sorted(cache.rglob("*.npy"))[:3]:
        npy.write_bytes(npy.read_bytes()[:64])  # truncated
    index = next(cache.rglob("index.json"))
    caplog.clear()
    assert train(data, tmp_path / "second", "--cache-dir", str(cache)) == 0
    assert sum("corrupt cached image of" in r.getMessage() for r in caplog.records) == 3
    index.write_text("[]")
    assert train(data, tmp_path / "third", "--cache-dir", str(cache)) == 0
    assert "not a covidxray cache index; rebuilding it" in caplog.text


def test_manifest_problems_are_one_line_or_a_warning(data, tmp_path, capsys, caplog):
    manifest = data / "manifest.csv"
    rows = manifest.read_text().splitlines()
    manifest.write_bytes(("\n".join(rows[:3]) + "\n").encode() + b"covid/x\x00.png,covid\n")
    assert train(data, tmp_path / "run") == 2
    assert "manifest.csv, row 4: the path 'covid/x\\x00.png' holds a NUL byte" in one_line_error(capsys)
    manifest.write_text("\n".join([*rows, rows[1], rows[2]]) + "\n")
    assert train(data, tmp_path / "run") == 0
    assert "manifest.csv: 2 row(s) list an image already listed (first: row 26 repeats row 2" in caplog.text
    assert sum(json.loads((tmp_path / "run" / "metrics.json").read_text())["run"]["images"].values()) == 24


def test_run_files_that_are_not_a_runs_are_one_line(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(data, run) == 0
    capsys.readouterr()
    broken = tmp_path / "broken"
    cases = [
        ("config.json", "[]", "config.json: not a covidxray run configuration"),
        ("config.json", json.dumps({**json.loads((run / "config.json").read_text()), "image_size": "big"}),
         "config.json: not a valid covidxray run configuration: image_size must be int"),
        ("config.json", json.dumps({**json.loads((run / "config.json").read_text()), "task": "binary",
                                    "classes": ["covid", "normal"]}),
         "model.keras: the model has 3 outputs but"),
        ("calibration.json", "[]", "calibration.json: not a valid covidxray calibration"),
        ("calibration.json", '{"temperature": 1.0, "covid_threshold": "high"}',
         "calibration.json: not a valid covidxray calibration"),
        ("split.csv", "path,label\nx.png,covid\n", "split.csv: no 'split' column"),
    ]
    for name, text, message in cases:
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(run, broken)
        (broken / name).write_text(text)
        assert main(["--quiet", "evaluate", "--run", str(broken), "--data", str(data)]) == 2, name
        assert message in one_line_error(capsys), name
