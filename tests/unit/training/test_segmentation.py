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
from covidxray.training.tracking import tensorboard_available
from helpers import write_png


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
