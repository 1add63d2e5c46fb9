"""Tests for training a lung segmenter (covidxray.training.segmentation) on synthetic films."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from covidxray.config import LungTrainConfig
from covidxray.errors import CovidXrayError
from covidxray.training.segmentation import (
    augment_pair,
    dice_iou,
    train_segmenter,
)
from covidxray.training.tracking import Tracker, tensorboard_available
from helpers import cut_after_epoch, write_png


def synthetic_film(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A bright film with two dark ellipses (the lungs) at a random place, and their mask."""
    yy, xx = np.mgrid[:size, :size] / size
    dx, dy = rng.uniform(-0.05, 0.05, 2)
    mask = np.zeros((size, size), bool)
    for cx in (0.3, 0.7):
        mask |= ((xx - cx - dx) / 0.14) ** 2 + ((yy - 0.5 - dy) / 0.3) ** 2 < 1
    image = np.where(mask, 60, 190) + rng.normal(0, 10, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def synthetic_mask_set(root, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = synthetic_film(rng)
        write_png(root / "images" / f"f{i}.png", image)
        write_png(root / "lung-masks" / f"f{i}.png", np.where(mask, 255, 0).astype(np.uint8))
    return root


def test_dice_and_iou():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:, :5] = True
    assert dice_iou(a, a) == (1.0, 1.0)
    assert dice_iou(a, b) == pytest.approx((0.5, 1 / 3))
    assert dice_iou(a & False, a & False) == (1.0, 1.0)


def test_augmentation_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    image, mask = synthetic_film(rng, 64)
    for _ in range(5):
        x, y = augment_pair(image, mask, rng)
        assert x.shape == y.shape == (64, 64) and set(np.unique(y)) <= {0.0, 1.0}
        inside, outside = x[y > 0.5].mean(), x[(y < 0.5) & (x > 0)].mean()
        assert inside < outside  # the dark ellipses are still where the mask says


def test_bad_settings_are_clear_errors():
    with pytest.raises(CovidXrayError, match="--image-size must be a multiple of 8"):
        LungTrainConfig(data=["x"], image_size=60, widths=[4, 8, 16, 32]).check()
    with pytest.raises(CovidXrayError, match="--epochs must be at least 1; got 0"):
        LungTrainConfig(data=["x"], epochs=0).check()
    with pytest.raises(CovidXrayError, match=r"--learning-rate must be in \(0, 1\); got 1.5"):
        LungTrainConfig(data=["x"], learning_rate=1.5).check()
    with pytest.raises(CovidXrayError, match=r"--val-fraction must be in \(0, 0.5\); got 0.5"):
        LungTrainConfig(data=["x"], val_fraction=0.5).check()
    with pytest.raises(CovidXrayError, match="--widths needs two or more positive numbers"):
        LungTrainConfig(data=["x"], widths=[8]).check()
    with pytest.raises(CovidXrayError, match="--data is required"):
        LungTrainConfig().check()


def test_train_segmenter_writes_a_run_that_segment_loads(tmp_path):
    from covidxray.inference.lungs import load_segmenter

    data = [synthetic_mask_set(tmp_path / "one", 24, 0), synthetic_mask_set(tmp_path / "two", 24, 1)]
    config = LungTrainConfig(data=[str(d) for d in data], image_size=32, widths=[4, 8, 8], epochs=2, batch_size=8)
    metrics = train_segmenter(config, tmp_path / "run", verbose=0)
    for name in ("model.keras", "segmenter.json", "split.csv", "history.csv", "metrics.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert set(metrics["test"]) == {"one", "two", "all"}
    for source in ("one", "two"):
        part = metrics["test"][source]
        assert part["n"] > 0 and 0 <= part["dice"] <= 1 and 0 <= part["iou"] <= part["dice"] + 1e-9
    assert list((tmp_path / "run" / "failures").glob("*.png"))
    # The classifier's callbacks: history.csv with the learning rate, the best epoch by val_dice, TensorBoard.
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    assert {"loss", "dice", "val_loss", "val_dice", "learning_rate"} <= set(history.columns)
    assert history["learning_rate"].iloc[1] < history["learning_rate"].iloc[0] <= config.learning_rate  # cosine decay
    ranked = sorted(range(2), key=lambda e: (round(history["val_dice"][e], 6), -history["val_loss"][e]))
    assert metrics["best_epoch"] == ranked[-1] + 1  # a tie in Dice goes to the lower loss
    if tensorboard_available():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "validation")).Reload()
        assert "epoch_dice" in events.Tags()["tensors"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["image_size"] == 32
    lungs = load_segmenter(tmp_path / "run")
    assert lungs.image_size == 32
    with pytest.raises(CovidXrayError, match="already holds a trained run"):
        train_segmenter(config, tmp_path / "run", verbose=0)
    config.epochs = 1
    train_segmenter(config, tmp_path / "run", overwrite=True, verbose=0)  # swapped in when complete
    assert json.loads((tmp_path / "run" / "segmenter.json").read_text())["training"]["epochs"] == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        ["failures", "history.csv", "metrics.json", "model.keras", "segmenter.json", "split.csv",
         *(["tensorboard"] if tensorboard_available() else [])])
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 1  # the new run's

    from covidxray.presets import package_run

    preset = package_run(tmp_path / "run", tmp_path / "preset")
    assert sorted(p.name for p in preset.iterdir()) == ["history.csv", "metrics.json", "model.keras", "segmenter.json",
                                                        "split.csv"]
    for name in ("split.csv", "metrics.json"):
        assert str(tmp_path) not in (preset / name).read_text(), name
    assert "one/images/f0.png" in (preset / "split.csv").read_text()
    assert load_segmenter(preset).segment([np.zeros((20, 20), np.uint8)])[0].quality == "no-lung"


class Killed(Exception):
    """Stands for the process killed right after an epoch's backup."""


class Recorder(Tracker):
    """A tracker that keeps what it is given."""

    def __init__(self):
        self.params, self.logged, self.files = None, [], []

    def start(self, name, params, tags=None):
        self.params = params

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, metrics))

    def log_files(self, folder, names):
        self.files += [name for name in names if (folder / name).is_file()]


def test_an_interrupted_lungs_run_resumes_to_the_uninterrupted_run(tmp_path, capsys):
    import keras

    from covidxray.cli.main import main
    from covidxray.inference.lungs import load_segmenter

    data = synthetic_mask_set(tmp_path / "one", 24, 0)
    run, whole = tmp_path / "run", tmp_path / "whole"
    args = ["--quiet", "lungs", "train", "--data", str(data), "--image-size", "32", "--widths", "4,8,8", "--epochs", "3",
            "--batch-size", "8", "--seed", "2"]
    tracker = Recorder()  # the run that is never cut, tracked as --track mlflow would log it
    config = LungTrainConfig(data=[str(data)], image_size=32, widths=[4, 8, 8], epochs=3, batch_size=8, seed=2)
    whole_metrics = train_segmenter(config, whole, verbose=0, track=tracker)
    assert tracker.params["epochs"] == 3 and tracker.params["widths"] == [4, 8, 8]
    assert [step for step, _ in tracker.logged] == [0, 1, 2, None]
    assert {"loss", "dice", "val_dice", "learning_rate"} <= set(tracker.logged[0][1])
    final = tracker.logged[-1][1]
    assert final["test_dice"] == whole_metrics["test"]["all"]["dice"] and final["best_epoch"] == whole_metrics["best_epoch"]
    assert tracker.files == ["metrics.json", "history.csv", "segmenter.json"]

    with cut_after_epoch(0, Killed):
        main([*args, "--out", str(run)])
    assert json.loads((run / "backup" / "state.json").read_text())["epoch"] == 1
    assert len(pd.read_csv(run / "history.csv")) == 1 and not (run / "metrics.json").exists()
    with pytest.raises(CovidXrayError, match="interrupted.*lungs train --resume"):
        load_segmenter(run)  # its model.keras is a checkpoint of training, not a segmenter yet
    capsys.readouterr()

    # refusals: a new run over it, a setting other than the run's; nothing touched
    assert main([*args, "--out", str(run)]) == 2
    assert f"continue it with covidxray lungs train --resume {run}" in capsys.readouterr().err
    assert main(["--quiet", "lungs", "train", "--resume", str(run), "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 5 (the run has 3)" in err and len(err.strip().splitlines()) == 1
    assert main(["--quiet", "lungs", "train", "--resume", str(run), "--out", str(whole)]) == 2
    assert "drop --out" in capsys.readouterr().err
    assert json.loads((run / "backup" / "state.json").read_text())["epoch"] == 1

    assert main(["--quiet", "lungs", "train", "--resume", str(run), "--widths", "4,8,8", "--seed", "2"]) == 0  # its own
    capsys.readouterr()
    assert not (run / "backup").exists()
    # The same epochs, best epoch, weights and held-out scores as the run that was never cut.
    resumed, uninterrupted = pd.read_csv(run / "history.csv"), pd.read_csv(whole / "history.csv")
    assert resumed["epoch"].tolist() == [0, 1, 2]
    for column in ("loss", "dice", "val_loss", "val_dice", "learning_rate"):
        assert resumed[column].to_numpy() == pytest.approx(uninterrupted[column].to_numpy(), rel=1e-5, abs=1e-6), column
    metrics = {name: json.loads((folder / "metrics.json").read_text()) for name, folder in (("run", run), ("whole", whole))}
    assert metrics["run"]["best_epoch"] == metrics["whole"]["best_epoch"]
    for split in ("test", "validation"):
        assert metrics["run"][split]["all"]["dice"] == pytest.approx(metrics["whole"][split]["all"]["dice"], abs=1e-6)
    weights = [keras.saving.load_model(folder / "model.keras").get_weights() for folder in (run, whole)]
    for mine, theirs in zip(*weights):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)

    assert main(["--quiet", "lungs", "train", "--resume", str(run)]) == 2
    assert "the run is complete" in capsys.readouterr().err
