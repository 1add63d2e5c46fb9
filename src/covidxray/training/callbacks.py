"""Callbacks of a training run, the classifier's and the lung U-Net's: precise validation after each
epoch, the best checkpoint, ``history.csv``, the learning rate in each epoch's logs, TensorBoard, and
the tracker (``--track``) of each epoch."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from covidxray import rundir
from covidxray.evaluation.metrics import cross_entropy
from covidxray.files import atomic_save, atomic_write_text
from covidxray.inference.engines import predict_arrays
from covidxray.models.batchnorm import recalibrate_batch_norm
from covidxray.training.tracking import Tracker, epoch_metrics, tensorboard_available

log = logging.getLogger(__name__)


class ClassifierCallback(keras.callbacks.Callback):
    """A callback that acts on the classifier: ``classifier`` where training runs a larger model
    holding it (:mod:`covidxray.training.adversary`), else the model being trained."""

    def __init__(self, classifier: keras.Model | None = None):
        super().__init__()
        self._classifier = classifier

    @property
    def classifier(self) -> keras.Model:
        trained = self.model  # on JAX, reading it syncs the training state into the shared variables
        return trained if self._classifier is None else self._classifier


class PreciseValidation(ClassifierCallback):
    """After each epoch: recompute batch-norm statistics on training images, then score the
    validation set; adds ``val_loss`` and ``val_accuracy`` to the epoch's logs.

    Keep it first among the callbacks, so that the checkpoint and early stopping see the
    validation scores of exactly the model they save.

    With no validation images (``--val-fraction 0``) it only recalibrates batch norm, so that the
    model the checkpoint saves is the one that will be scored.
    """

    def __init__(self, calibration_images: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                 classifier: keras.Model | None = None):
        super().__init__(classifier)
        self.calibration_images, self.x_val, self.y_val = calibration_images, x_val, y_val

    def on_epoch_end(self, epoch, logs=None):
        model = self.classifier
        recalibrate_batch_norm(model, self.calibration_images)
        if not len(self.x_val):
            return
        probabilities = predict_arrays(model, self.x_val, pad=False)  # the same images each epoch: traced once
        if logs is not None:
            logs["val_loss"] = cross_entropy(self.y_val, probabilities)
            logs["val_accuracy"] = float(np.mean(probabilities.argmax(axis=1) == self.y_val))


class BestCheckpoint(ClassifierCallback):
    """Keep the model of the epoch with the best ``monitor`` score (``mode`` "max": higher is better,
    "min": lower), compared to 6 decimals; a tie goes to the lower ``val_loss``. The model is saved,
    atomically, to ``path`` at each improvement (a run's backup keeps that file, so an interrupted run
    resumes with it). ``best_epoch`` counts from 1. ``keep_last`` (a run without a validation
    split, ``--val-fraction 0``): every epoch is kept, so the last one is.

    The classifier monitors validation accuracy rather than loss: late epochs grow more confident,
    which raises the validation loss while accuracy still improves (measured on DarkCovidNet: loss
    picked epoch 13 of 30 at 70.8% validation accuracy, the last epochs reached 75.8%). The lung
    U-Net monitors its validation Dice (``val_dice``).
    """

    def __init__(self, path: Path, classifier: keras.Model | None = None, keep_last: bool = False,
                 monitor: str = "val_accuracy", mode: str = "max"):
        super().__init__(classifier)
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}")
        self.path = Path(path)
        self.monitor, self.sign, self.keep_last = monitor, 1.0 if mode == "max" else -1.0, keep_last
        self.best, self.best_epoch = (-np.inf, -np.inf), None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keep_last:  # each epoch beats the one before
            score = (float(epoch), 0.0)
        elif self.monitor in logs:
            score = (round(self.sign * float(logs[self.monitor]), 6), -float(logs.get("val_loss", 0.0)))
        else:
            return
        if score > self.best:
            self.best, self.best_epoch = score, epoch + 1
            atomic_save(self.path, self.classifier.save)

    def state(self) -> dict:  # for resuming (covidxray.training.backup)
        return {"best": [float(v) for v in self.best], "best_epoch": self.best_epoch}

    def restore(self, state: dict) -> None:
        self.best, self.best_epoch = tuple(state["best"]), state["best_epoch"]


class HistoryCsv(keras.callbacks.Callback):
    """Each finished epoch's logs as a row of ``RUN/history.csv`` (``epoch`` from 0, then the logs by
    name), the file rewritten whole, atomically, after every epoch: never a partial line.

    :class:`~covidxray.training.backup.RunBackup` holds one and writes it after its backup (``rows``
    are part of the saved state, restored on resume).
    """

    def __init__(self, run: rundir.RunDir, rows: list[dict] | None = None):
        super().__init__()
        self.run, self.rows = run, list(rows or [])

    def add(self, epoch: int, logs: dict | None) -> None:
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())}})

    def write(self) -> None:
        atomic_write_text(self.run.file(rundir.HISTORY), pd.DataFrame(self.rows).to_csv(index=False))

    def on_epoch_end(self, epoch, logs=None):
        self.add(epoch, logs)
        self.write()


class LearningRateLog(keras.callbacks.Callback):
    """Add the optimizer's learning rate at the end of each epoch to the epoch's logs (``history.csv``,
    the tracker), as Keras's TensorBoard callback adds it to its own."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class TrackEpochs(keras.callbacks.Callback):
    """Log each epoch's logs to ``tracker`` (MLflow with ``--track mlflow``) as the epoch ends."""

    def __init__(self, tracker: Tracker):
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.log_metrics(epoch_metrics(logs or {}), step=epoch)


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback for epoch scalars alone (no graph, histograms or profile). Keras's
    own also hands each batch's logs to ``tf.summary.scalar``, which writes nothing without a batch
    writer but took 0.54 s over the 20 batches of a 4-epoch 64 px compactnet run (2-core machine)."""

    def __init__(self, log_dir: str):
        super().__init__(log_dir, write_graph=False)

    def on_train_batch_end(self, batch, logs=None):
        pass


def tensorboard_callback(run: rundir.RunDir) -> EpochTensorBoard | None:
    """The callback writing each epoch's logs into ``RUN/tensorboard/``, or None where tensorflow or
    tensorboard is missing (said once)."""
    if not tensorboard_available():
        log.info("no TensorBoard logs: they need tensorflow and tensorboard (pip install 'covidxray[tensorflow]')")
        return None
    return EpochTensorBoard(str(run.file(rundir.TENSORBOARD)))
