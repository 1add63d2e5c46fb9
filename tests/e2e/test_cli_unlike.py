"""End to end: an X-ray unlike the training data is flagged by predict, evaluate and the web page
(covidxray.inference.familiarity), and a run without familiarity.npz flags nothing."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from covidxray.cli import main
from covidxray.inference.familiarity import UNLIKE, Familiarity
from covidxray.rundir import FAMILIARITY
from helpers import make_dataset, write_image


def _checkerboard(side: int = 48, square: int = 4) -> np.ndarray:
    """Black and white squares: nothing like the synthetic X-rays (smooth noise, a disc, stripes)."""
    cells = (np.indices((side, side)) // square).sum(axis=0) % 2
    return np.where(cells == 0, 255, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small three-class run (the default model) and two files to predict: a training image and a checkerboard."""
    root = tmp_path_factory.mktemp("unlike")
    data = make_dataset(root / "data", per_class=12)
    run = root / "run"
    assert main(["--quiet", "train", "--data", str(data), "--task", "three-class", "--out", str(run),
                 "--image-size", "32", "--epochs", "3", "--seed", "3", "--cache-dir", str(root / "cache")]) == 0
    split = pd.read_csv(run / "split.csv")
    like = split.loc[split["split"] == "train", "path"].iloc[0]  # the model's own training image: familiar
    board = write_image(root / "files" / "board.png", _checkerboard())
    return data, run, like, str(board)


@pytest.fixture(scope="module")
def without_familiarity(trained, tmp_path_factory):
    """The same run as trained before familiarity existed: no familiarity.npz."""
    run = shutil.copytree(trained[1], tmp_path_factory.mktemp("old") / "run")
    (run / FAMILIARITY).unlink()
    return run


def _warned(err: str) -> list[str]:
    return [line for line in err.splitlines() if UNLIKE in line]


def test_train_writes_the_familiarity_and_reports_it(trained):
    _, run, _, _ = trained
    assert (run / FAMILIARITY).is_file() and (run / FAMILIARITY).stat().st_size > 0
    metrics = json.loads((run / "metrics.json").read_text())
    unlike = metrics["unlike_training"]
    assert unlike["share"] == 0.10 and unlike["threshold"] > 0 and 0 < unlike["min_probability"] < 1
    assert unlike["test"]["images"] == metrics["test"]["n"] == metrics["run"]["images"]["test"]
    report = (run / "report.md").read_text()
    assert "## Unlike the training data" in report
    assert f"flags {unlike['test']['unlike']} of {unlike['test']['images']} images" in report


def test_predict_warns_about_the_checkerboard_only(trained, capsys):
    _, run, like, board = trained
    assert main(["--quiet", "predict", "--run", str(run), like, board, "--format", "json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [r["path"] for r in results] == [like, board]
    assert [r["unlike_training"] for r in results] == [False, True]
    assert _warned(captured.err) == [f"covidxray: {board}: {UNLIKE}"]
    assert "Traceback" not in captured.err


def test_predict_flags_the_test_split_as_training_did(trained, capsys):
    _, run, _, _ = trained
    split = pd.read_csv(run / "split.csv")
    test_files = split.loc[split["split"] == "test", "path"].tolist()
    assert main(["--quiet", "predict", "--run", str(run), *test_files, "--format", "json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    flagged = [r["path"] for r in results if r["unlike_training"]]
    assert len(results) == len(test_files)
    assert len(flagged) == json.loads((run / "metrics.json").read_text())["unlike_training"]["test"]["unlike"]
    assert _warned(captured.err) == [f"covidxray: {path}: {UNLIKE}" for path in flagged]


def test_predict_csv_shows_the_flag(trained, capsys):
    _, run, like, board = trained
    assert main(["--quiet", "predict", "--run", str(run), like, board, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row.get("unlike_training") for row in rows] == ["False", "True"]


def test_evaluate_counts_the_flagged_images_and_writes_them_per_image(trained, tmp_path, capsys):
    _, run, like, board = trained
    data = tmp_path / "external"
    write_image(data / "normal" / "board.png", _checkerboard())
    (data / "covid").mkdir(parents=True)
    shutil.copy(like, data / "covid" / "familiar.png")
    out, predictions = tmp_path / "x.json", tmp_path / "p.csv"
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--out", str(out),
                 "--predictions", str(predictions), "--include-seen"]) == 0
    result = json.loads(out.read_text())
    rows = pd.read_csv(predictions)
    assert "unlike_training" in rows.columns and rows["unlike_training"].dtype == bool
    by_name = dict(zip(rows["path"].map(lambda p: p.rsplit("/", 1)[-1]), rows["unlike_training"]))
    assert by_name == {"board.png": True, "familiar.png": False}
    correct = rows["label"] == rows["predicted"]
    board_row = rows["path"].str.endswith("board.png")
    assert result["unlike_training"] == {
        "images": 2, "unlike": 1, "share_unlike": 0.5, "accuracy_all": pytest.approx(correct.mean()),
        "accuracy_unflagged": float(correct[~board_row].iloc[0]), "accuracy_unlike": float(correct[board_row].iloc[0])}
    assert result["unlike_training"]["images"] == result["n"]
    capsys.readouterr()


def test_evaluate_on_the_training_data(trained, tmp_path, capsys):
    data, run, _, _ = trained
    out, predictions = tmp_path / "x.json", tmp_path / "p.csv"
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--out", str(out),
                 "--predictions", str(predictions), "--include-seen"]) == 0
    result = json.loads(out.read_text())
    rows = pd.read_csv(predictions)
    assert result["n"] == len(rows) == 36 and result["unlike_training"]["images"] == 36
    assert result["unlike_training"]["unlike"] == int(rows["unlike_training"].sum())
    split = pd.read_csv(run / "split.csv").set_index("path")["split"]
    own = rows[rows["path"].map(split) == "train"]  # its own training images: flagged only where the model is unsure
    floor = Familiarity.load(run).min_probability
    top = own[["covid", "normal", "pneumonia"]].max(axis=1)
    assert (top[own["unlike_training"]] < floor + 1e-6).all() and (top[~own["unlike_training"]] > floor - 1e-6).all()
    capsys.readouterr()


def _client(run):
    pytest.importorskip("fastapi", reason="covidxray[serve] is not installed")
    from fastapi.testclient import TestClient

    from covidxray.inference.analysis import XrayAnalyzer
    from covidxray.web.app import create_app

    return TestClient(create_app(XrayAnalyzer(run)))


def _upload(client, name: str, data: bytes, url: str = "/"):
    return client.post(url, files={"file": (name, data, "application/octet-stream")})


def test_web_page_and_api_flag_the_checkerboard_only(trained):
    from pathlib import Path

    _, run, like, board = trained
    client = _client(run)
    page = _upload(client, "board.png", Path(board).read_bytes())
    assert page.status_code == 200 and 'id="unlike"' in page.text
    assert "This X-ray looks unlike the data this model was trained on" in page.text
    assert page.text.index('id="unlike"') < page.text.index('id="label"')  # the headline, above the class
    familiar = _upload(client, "familiar.png", Path(like).read_bytes())
    assert familiar.status_code == 200 and '<span id="label">' in familiar.text and 'id="unlike"' not in familiar.text
    flagged = _upload(client, "board.png", Path(board).read_bytes(), "/api/predict").json()
    assert flagged["unlike_training"] is True and flagged["file"] == "board.png"
    assert _upload(client, "familiar.png", Path(like).read_bytes(), "/api/predict").json()["unlike_training"] is False


def test_a_run_without_familiarity_flags_nothing(trained, without_familiarity, tmp_path, capsys):
    from pathlib import Path

    data, _, like, board = trained
    run = without_familiarity
    assert main(["--quiet", "predict", "--run", str(run), like, board, "--format", "json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert len(results) == 2 and all("unlike_training" not in r for r in results)
    assert set(results[1]) >= {"path", "label", "probabilities"}
    assert _warned(captured.err) == [] and "error" not in captured.err
    out, predictions = tmp_path / "x.json", tmp_path / "p.csv"
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--out", str(out),
                 "--predictions", str(predictions), "--include-seen"]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 36 and "unlike_training" not in result
    assert "unlike_training" not in pd.read_csv(predictions).columns
    assert not (run / FAMILIARITY).exists()  # nothing written back
    capsys.readouterr()
    client = _client(run)
    page = _upload(client, "board.png", Path(board).read_bytes())
    assert page.status_code == 200 and '<span id="label">' in page.text and 'id="unlike"' not in page.text
    assert _upload(client, "board.png", Path(board).read_bytes(), "/api/predict").json()["unlike_training"] is None


def test_a_damaged_familiarity_is_one_clear_error(trained, tmp_path, capsys):
    _, run, like, _ = trained
    damaged = shutil.copytree(run, tmp_path / "run")
    (damaged / FAMILIARITY).write_bytes(b"not numpy")
    assert main(["--quiet", "predict", "--run", str(damaged), like]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"covidxray: error: {damaged / FAMILIARITY}: unreadable")
    assert "delete it" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_predict_table_gives_no_answer_for_the_flagged_image(trained, capsys):
    _, run, like, board = trained
    assert main(["--quiet", "predict", "--run", str(run), like, board]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines[board][1:3] == ["no", "answer"] and lines[board][-1] == "True"
    assert lines[like][1] in ("covid", "normal", "pneumonia") and lines[like][-1] == "False"
