"""covidxray.training.loop: the run loop both trainers share (checkpoint, early stopping, backup, history)."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from covidxray import rundir
from covidxray.training.loop import RunLoop

SCORES = [0.1, 0.9, 0.2, 0.3, 0.2, 0.5, 0.4, 0.6, 0.7, 0.8]


class Scores(keras.callbacks.Callback):
    """A trainer's own callback: adds a validation score per epoch to the logs."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = SCORES[epoch]


class Batches(keras.utils.PyDataset):
    """One batch of zeros; remembers the epoch it was started at."""

    started = None

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")

    def start_at(self, epoch):
        self.started = epoch


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_the_loop_stops_early_from_the_middle_and_a_stopped_run_only_returns_what_it_saved(tmp_path):
    run = rundir.RunDir(tmp_path / "run")
    run.path.mkdir()
    loop = RunLoop(run, epochs=10, monitor="val_score", patience=1)
    assert loop.state is None
    x, y = np.zeros((8, 2), "float32"), np.zeros(8, "float32")
    fitted = loop.fit(tiny_model(), (x, y), callbacks=[Scores()], verbose=0, batch_size=4)
    # Watched from epoch 6 (index 5, 0.5) on: 0.4 is no better, and patience 1 stops there.
    assert len(fitted["history"]) == 7 and fitted["best_epoch"] == 2  # 0.9, before the watch began
    history = pd.read_csv(run.file(rundir.HISTORY))
    assert history["val_score"].tolist() == SCORES[:7] and "learning_rate" in history
    assert run.file(rundir.MODEL).is_file()
    again = RunLoop(run, epochs=10, monitor="val_score", patience=1)
    assert again.state["stopped"] and again.state["epoch"] == 7
    model = tiny_model()
    before = [w.copy() for w in model.get_weights()]
    resumed = again.fit(model, (x, y), callbacks=[Scores()], verbose=0, batch_size=4)
    assert resumed == {**fitted, "fit_seconds": again.state["fit_seconds"]}
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # nothing fitted


def test_without_patience_every_epoch_runs_and_a_resumed_dataset_starts_at_its_epoch(tmp_path):
    run = rundir.RunDir(tmp_path)
    batches = Batches()
    fitted = RunLoop(run, epochs=10, monitor="val_score").fit(tiny_model(), batches, callbacks=[Scores()], verbose=0)
    assert len(fitted["history"]) == 10 and fitted["best_epoch"] == 2 and batches.started == 0
    loop = RunLoop(run, epochs=12, monitor="val_score")  # as if the run had been cut after 10 of 12 epochs
    assert loop.state["epoch"] == 10 and not loop.state["stopped"]
    SCORES.extend([0.95, 0.1])
    try:
        resumed = loop.fit(tiny_model(), batches, callbacks=[Scores()], verbose=0)
    finally:
        del SCORES[10:]
    assert batches.started == 10 and len(resumed["history"]) == 12 and resumed["best_epoch"] == 11
    assert pd.read_csv(run.file(rundir.HISTORY))["epoch"].tolist() == list(range(12))
