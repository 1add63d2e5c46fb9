"""Resume: a run killed with SIGKILL continues from its last finished epoch; its folder is never half-written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import pandas as pd
import pytest

import covidxray
import covidxray.models.augment  # noqa: F401  (register covidxray's layers, which the saved models hold:
import covidxray.models.batchnorm  # noqa: F401  RandomAffine and the fused BatchNormalization)
from covidxray.cli import main
from helpers import make_dataset

EPOCHS = 8


def _history_rows(path: Path) -> int:
    try:
        return len(pd.read_csv(path))
    except (OSError, ValueError):
        return 0


def _check_complete(run: Path) -> int:
    """Every file of the (interrupted) run parses; returns the number of finished epochs."""
    assert json.loads((run / "config.json").read_text())["epochs"] == EPOCHS
    assert len(pd.read_csv(run / "split.csv")) == 30
    history = pd.read_csv(run / "history.csv")
    assert not history.isna().any().any()  # no partial line
    assert list(history["epoch"]) == list(range(len(history)))
    keras.saving.load_model(run / "model.keras", compile=False)
    backup = run / "backup"
    state = json.loads((backup / "state.json").read_text())
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == state["epoch"]
    with h5py.File(backup / "latest.weights.h5", "r") as weights:
        assert len(weights.keys()) > 0
    keras.saving.load_model(backup / "best.keras", compile=False)
    assert not (run / "metrics.json").exists()
    return state["epoch"]


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_epoch(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=10)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--image-size", "32", "--epochs", str(EPOCHS),
            "--patience", str(EPOCHS), "--seed", "5", "--batch-size", "8", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(Path(covidxray.__file__).parents[1]), "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen([sys.executable, "-m", "covidxray", "--quiet", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while _history_rows(run / "history.csv") < 1 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "training ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    finished = _check_complete(run)
    assert 1 <= finished < EPOCHS

    # refusals: a new run over it, conflicting options, no backup
    assert main(["--quiet", *args]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["--quiet", "train", "--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 3" in err and f"(the run has {EPOCHS})" in err and len(err.strip().splitlines()) == 1
    assert _check_complete(run) == finished  # nothing touched

    assert main(["--quiet", "train", "--resume", str(run), "--seed", "5"]) == 0  # same as the run's: fine
    capsys.readouterr()
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(EPOCHS))  # each epoch once, contiguous
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["resumed"] and metrics["run"]["epochs_run"] == EPOCHS
    assert metrics["train"]["accuracy"] >= 0.9  # easy synthetic classes: the resumed run kept learning
    assert not (run / "backup").exists() and not [p.name for p in run.iterdir() if p.name.startswith(".")]
    # The optimizer state (hence the learning-rate schedule) was restored, not restarted: the best
    # checkpoint's step count covers the epochs before the kill too.
    best = keras.saving.load_model(run / "model.keras")
    steps_per_epoch = -(-metrics["run"]["images"]["train"] // 8)
    assert int(best.optimizer.iterations.numpy()) == metrics["run"]["best_epoch"] * steps_per_epoch

    assert main(["--quiet", "train", "--resume", str(run)]) == 2
    assert "complete" in capsys.readouterr().err

    # The resumed run is the uninterrupted one: same weights, optimizer state, augmentation seeds
    # and training order (TensorFlow) from the cut on, hence the same losses epoch by epoch.
    whole = tmp_path / "whole"
    assert main(["--quiet", *[str(whole) if a == str(run) else a for a in args]]) == 0
    uninterrupted = pd.read_csv(whole / "history.csv")
    for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[column].to_numpy() == pytest.approx(uninterrupted[column].to_numpy(), rel=1e-4, abs=1e-5), column


def test_resume_refuses_a_run_without_backup(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": str(tmp_path), "epochs": 2}))
    assert main(["--quiet", "train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(run) in err and "no backup" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert main(["--quiet", "train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no such run" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither --data/--out nor --resume
        main(["--quiet", "train"])
    assert "--resume" in capsys.readouterr().err
