"""covidxray.training.callbacks: precise validation after each epoch, the best checkpoint, history.csv."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from covidxray import rundir
from covidxray.evaluation.metrics import cross_entropy
from covidxray.inference.engines import predict_arrays
from covidxray.training.callbacks import BestCheckpoint, HistoryCsv, PreciseValidation
from helpers import gray, tiny_body


class Model:
    """What BestCheckpoint needs of a model: ``save``, recorded."""

    def __init__(self):
        self.saved = 0

    def save(self, path):
        self.saved += 1
        path.write_text(str(self.saved))


@pytest.mark.parametrize("scores, saved_epochs", [
    ([(0.5, 1.0), (0.7, 0.9), (0.6, 0.5)], [1, 2]),  # better accuracy wins, whatever the loss
    ([(0.5, 1.0), (0.5, 0.8), (0.5, 0.9)], [1, 2]),  # a tie at a lower loss wins
    ([(0.5, 1.0), (0.5000001, 2.0)], [1]),  # accuracy is compared to 6 decimals: a tie, at a higher loss
])
def test_best_checkpoint_saves_only_improvements(tmp_path, scores, saved_epochs):
    checkpoint = BestCheckpoint(tmp_path / "model.keras")
    checkpoint.set_model(Model())
    saved = []
    for epoch, (accuracy, loss) in enumerate(scores):
        before = checkpoint.model.saved
        checkpoint.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
        if checkpoint.model.saved > before:
            saved.append(epoch + 1)
    assert saved == saved_epochs and checkpoint.best_epoch == saved_epochs[-1]
    assert (tmp_path / "model.keras").read_text() == str(len(saved_epochs))
    restored = BestCheckpoint(tmp_path / "other.keras")
    restored.restore(checkpoint.state())
    assert restored.best_epoch == checkpoint.best_epoch and restored.best == checkpoint.best
    checkpoint.on_epoch_end(9, {"loss": 0.1})  # no validation scores: nothing to compare
    assert checkpoint.model.saved == len(saved_epochs)


def test_a_checkpoint_that_keeps_the_last_epoch_saves_every_epoch(tmp_path):
    checkpoint = BestCheckpoint(tmp_path / "model.keras", keep_last=True)
    checkpoint.set_model(Model())
    for epoch in range(3):  # validation scores, where there are some, do not matter
        checkpoint.on_epoch_end(epoch, {"loss": 0.1} if epoch != 1 else {"val_accuracy": 1.0, "val_loss": 0.0})
        assert checkpoint.model.saved == epoch + 1 and checkpoint.best_epoch == epoch + 1
    restored = BestCheckpoint(tmp_path / "other.keras", keep_last=True)
    restored.set_model(Model())
    restored.restore(checkpoint.state())
    restored.on_epoch_end(3, {"loss": 0.1})  # a resumed run goes on saving
    assert restored.model.saved == 1 and restored.best_epoch == 4


@pytest.mark.parametrize("mode, scores, kept", [
    ("max", [0.5, 0.8, 0.7, 0.8], 2),  # the U-Net's val_dice: the first of two equal bests
    ("min", [0.5, 0.8, 0.3, 0.4], 3),
])
def test_best_checkpoint_monitors_any_score(tmp_path, mode, scores, kept):
    checkpoint = BestCheckpoint(tmp_path / "model.keras", monitor="val_dice", mode=mode)
    checkpoint.set_model(Model())
    saved = []
    for epoch, score in enumerate(scores):
        before = checkpoint.model.saved
        checkpoint.on_epoch_end(epoch, {"val_dice": score, "val_accuracy": 1.0 - score, "val_loss": 1.0})
        if checkpoint.model.saved > before:
            saved.append(epoch + 1)
    assert checkpoint.best_epoch == kept == saved[-1]  # the file holds that epoch's model, saved last
    assert (tmp_path / "model.keras").read_text() == str(len(saved))
    with pytest.raises(ValueError, match="'max' or 'min'"):
        BestCheckpoint(tmp_path / "model.keras", monitor="val_dice", mode="maximum")


def test_history_csv_writes_a_row_per_epoch_with_the_logs_by_name(tmp_path):
    run = rundir.RunDir(tmp_path)
    history = HistoryCsv(run, rows=[{"epoch": 0, "loss": 2.0}])  # a resumed run's rows so far
    history.on_epoch_end(1, {"val_dice": np.float32(0.5), "loss": 1.0})
    table = pd.read_csv(run.file(rundir.HISTORY))
    assert list(table.columns) == ["epoch", "loss", "val_dice"]
    assert table["epoch"].tolist() == [0, 1] and table["loss"].tolist() == [2.0, 1.0]
    assert table["val_dice"].iloc[1] == 0.5 and np.isnan(table["val_dice"].iloc[0])


def test_precise_validation_scores_the_validation_set():
    inputs = keras.Input((32, 32, 1))
    model = keras.Model(inputs, tiny_body(keras.layers.Rescaling(1 / 255)(inputs), 3))
    images = np.stack([gray(i, (32, 32)) for i in range(12)])[..., None]
    labels = np.arange(12) % 3
    callback = PreciseValidation(images[:8], images[8:], labels[8:])
    callback.set_model(model)
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert not keras.ops.convert_to_numpy(norm.moving_mean).any()  # as initialised
    logs = {}
    callback.on_epoch_end(0, logs)
    probabilities = predict_arrays(model, images[8:])
    assert logs["val_loss"] == pytest.approx(cross_entropy(labels[8:], probabilities))
    assert logs["val_accuracy"] == pytest.approx(np.mean(probabilities.argmax(axis=1) == labels[8:]))
    assert keras.ops.convert_to_numpy(norm.moving_mean).any()  # recomputed on the training images first
