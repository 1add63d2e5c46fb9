"""Train a model and write its run directory.

Data flows one way: files -> table -> decoded arrays -> split -> model -> predictions ->
metrics -> figures and report. :func:`train` is the whole pipeline; each step is a function
of its own so that notebooks and other commands can reuse it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight

from covidxray import rundir
from covidxray.backup import EarlyStopping, RunBackup, SeedStates, check_resumable, read_state
from covidxray.calibration import Calibration, scale
from covidxray.config import TrainConfig
from covidxray.data.batches import ShuffledBatches, repeated_tf_dataset
from covidxray.data.loading import LabelledImages, load_labelled_images
from covidxray.data.splits import SPLITS, split_dataset, without_patient_id
from covidxray.distribute import data_parallel, device_count, process_slice
from covidxray.errors import CovidXrayError, DatasetError
from covidxray.evaluate import calibration_summary, fit_calibration, score
from covidxray.files import atomic_save
from covidxray.metrics import confounding_warning, cross_entropy
from covidxray.models import create_model
from covidxray.models.batchnorm import recalibrate_batch_norm
from covidxray.predict import predict_arrays
from covidxray.report import write_figures_and_report
from covidxray.shortcut import blank_lung_field

log = logging.getLogger(__name__)

#: Training images used to recompute batch-norm statistics after each epoch.
CALIBRATION_IMAGES = 256


@dataclass
class PreparedData:
    """A labelled, decoded and split dataset, ready for ``model.fit``."""

    table: pd.DataFrame  # path, label, patient_id, source, ..., pixels, split
    images: np.ndarray  # (n, size, size, 1) uint8, row i is table row i (a lazy ShardArray for shards)
    targets: np.ndarray  # (n,) class indices into classes
    classes: tuple[str, ...]
    skipped: dict[str, str]  # path -> why it was left out

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.mask(split)
        return self.images[mask], self.targets[mask]

    def mask(self, split: str) -> np.ndarray:
        return (self.table["split"] == split).to_numpy()


def load_data(config: TrainConfig, progress: bool | None = None) -> LabelledImages:
    """Read and decode the data of ``config`` (resolved); with ``blank_lungs``, hide the lung field."""
    data = load_labelled_images(config.data, config.classes, config.image_size, cache_dir=config.cache_dir,
                                progress=progress)
    if config.blank_lungs:
        if not isinstance(data.images, np.ndarray):
            raise CovidXrayError("--blank-lungs needs the images in memory; train on the image files, not a shard folder")
        data.images = blank_lung_field(data.images, config.blank_lungs)
    return data


def split_data(config: TrainConfig, data: LabelledImages, test_mask: np.ndarray | None = None) -> PreparedData:
    """Assign train / validation / test (``test_mask``: the test rows are given, as in cross-validation)."""
    table = data.table.copy()
    table["split"] = split_dataset(table, pixel_digests=list(table["pixels"]), val_fraction=config.val_fraction,
                                   test_fraction=config.test_fraction, seed=config.seed, test_mask=test_mask,
                                   group_by=config.group_by)
    return PreparedData(table, data.images, data.targets, config.classes, data.skipped)


def prepare_data(config: TrainConfig, progress: bool | None = None) -> PreparedData:
    """Read, decode and split the data of ``config`` (resolved)."""
    return split_data(config, load_data(config, progress))


class PreciseValidation(keras.callbacks.Callback):
    """After each epoch: recompute batch-norm statistics on training images, then score the
    validation set; adds ``val_loss`` and ``val_accuracy`` to the epoch's logs.

    Keep it first among the callbacks, so that the checkpoint and early stopping see the
    validation scores of exactly the model they save.
    """

    def __init__(self, calibration_images: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
        super().__init__()
        self.calibration_images, self.x_val, self.y_val = calibration_images, x_val, y_val

    def on_epoch_end(self, epoch, logs=None):
        recalibrate_batch_norm(self.model, self.calibration_images)
        probabilities = predict_arrays(self.model, self.x_val)
        if logs is not None:
            logs["val_loss"] = cross_entropy(self.y_val, probabilities)
            logs["val_accuracy"] = float(np.mean(probabilities.argmax(axis=1) == self.y_val))


class BestCheckpoint(keras.callbacks.Callback):
    """Save the model, atomically, whenever validation accuracy improves (or ties at a lower loss).

    Accuracy rather than loss: late epochs grow more confident, which raises the validation
    loss while accuracy still improves (measured on DarkCovidNet: loss picked epoch 13 of 30 at
    70.8% validation accuracy, the last epochs reached 75.8%).
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.best, self.best_epoch = Path(path), (-np.inf, -np.inf), None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_accuracy" not in logs:
            return
        score = (round(float(logs["val_accuracy"]), 6), -float(logs["val_loss"]))
        if score > self.best:
            self.best, self.best_epoch = score, epoch + 1
            atomic_save(self.path, self.model.save)

    def state(self) -> dict:  # for resuming (covidxray.backup)
        return {"best": [float(v) for v in self.best], "best_epoch": self.best_epoch}

    def restore(self, state: dict) -> None:
        self.best, self.best_epoch = tuple(state["best"]), state["best_epoch"]


def build_model(config: TrainConfig, train_size: int) -> keras.Model:
    """Create and compile the model of ``config`` (resolved) for ``train_size`` training images."""
    if config.steps_per_execution > 1 and keras.backend.backend() == "torch":
        raise CovidXrayError("--steps-per-execution must be 1 with the PyTorch backend (Keras runs it eagerly)")
    keras.utils.set_random_seed(config.seed)
    model = create_model(config.model, num_classes=len(config.classes), image_size=config.image_size,
                         weights=config.weights, augment=config.augment, flip=config.flip, seed=config.seed,
                         dtype_policy=config.mixed_precision)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate_schedule(config, train_size)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=config.jit_compile,
                  steps_per_execution=config.steps_per_execution)
    return model


def fit(config: TrainConfig, data: PreparedData, run: rundir.RunDir, verbose: int = 1) -> dict:
    """Build, compile and fit the model; the epoch with the best validation accuracy is saved.

    Where ``run`` holds the backup of an interrupted fit, it continues from its last finished epoch.
    With ``config.distribute == "data-parallel"`` the model is built and trained under a
    ``keras.distribution.DataParallel`` over ``config.devices`` devices (JAX backend).
    """
    distribution = data_parallel(config.batch_size, config.devices) if config.distribute == "data-parallel" else None
    with distribution.scope() if distribution else contextlib.nullcontext():
        return {**_fit(config, data, run, verbose, distributed=distribution is not None),
                "devices": device_count(distribution)}


def training_batches(config: TrainConfig, x, y, class_weight, distributed: bool) -> ShuffledBatches | None:
    """Batches from a PyDataset where the arrays cannot go to ``model.fit`` as they are: images
    streamed from shards, or whole batches only, as data-parallel training needs. None otherwise."""
    if isinstance(x, np.ndarray) and not distributed:
        return None
    index, count = process_slice() if distributed else (0, 1)
    return ShuffledBatches(x, y, config.batch_size, seed=config.seed, class_weight=class_weight,
                           drop_remainder=distributed, process_index=index, process_count=count)


def _fit(config: TrainConfig, data: PreparedData, run: rundir.RunDir, verbose: int, distributed: bool) -> dict:
    x_train, y_train = data.part("train")
    class_weight = balanced_class_weights(y_train, len(config.classes)) if config.class_weights else None
    batches = training_batches(config, x_train, y_train, class_weight, distributed)
    model = build_model(config, len(x_train) if batches is None else len(batches) * config.batch_size)
    checkpoint = BestCheckpoint(run.file(rundir.MODEL))
    rng = np.random.default_rng(config.seed)
    calibration = x_train[np.sort(rng.permutation(len(x_train))[:CALIBRATION_IMAGES])]
    # Watch from the middle on: the first half of the cosine schedule explores at a high
    # learning rate and validation accuracy is noisy there. Measured on DarkCovidNet: a run
    # stopped at epoch 17 of 30 on its epoch-7 best (73% validation accuracy); runs that
    # went the full 30 epochs peaked at epochs 20-28 with 79-82%.
    stopping = EarlyStopping(monitor="val_accuracy", mode="max", patience=config.patience,
                             start_from_epoch=config.epochs // 2)
    state = read_state(run)
    backup = RunBackup(run, {"checkpoint": checkpoint, "early_stopping": stopping, "seeds": SeedStates(model)}, state)
    callbacks = [
        PreciseValidation(calibration, *data.part("validation")),  # first: the others see its scores
        checkpoint,
        stopping,
        backup,  # last: saves the states the others reach at each epoch's end, and writes history.csv
    ]
    if state is not None and (state["stopped"] or state["epoch"] >= config.epochs):
        history, seconds, best_epoch = state["history"], state["fit_seconds"], state["parts"]["checkpoint"]["best_epoch"]
    else:
        done = 0 if state is None else state["epoch"]  # a resumed run draws the order of the epochs it has left
        if batches is None:
            fit_arrays(model, x_train, y_train, epochs=config.epochs, batch_size=config.batch_size,
                       class_weight=class_weight, callbacks=callbacks, verbose=verbose, seed=config.seed,
                       skip_epochs=done)
        else:  # the PyDataset shuffles, from the seed
            batches.start_at(done)
            model.fit(batches, epochs=config.epochs, callbacks=callbacks, verbose=verbose, shuffle=False)
        history, seconds, best_epoch = backup.history, backup.fit_seconds, checkpoint.best_epoch
    epochs_run = len(history)
    return {"best_epoch": best_epoch, "fit_seconds": round(seconds, 1), "epochs_run": epochs_run,
            "train_images_per_second": round(len(x_train) * epochs_run / max(seconds, 1e-9), 1)}


def fit_arrays(model: keras.Model, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
               class_weight: dict | None = None, callbacks=(), verbose: int = 0, seed: int = 0,
               skip_epochs: int = 0) -> keras.callbacks.History:
    """Train ``model`` on in-memory images ``x`` (uint8, [0, 255]) and labels ``y``, reshuffled each
    epoch: the input pipeline of :func:`fit` (and of ``benchmarks/train_speed.py``).

    On TensorFlow the arrays go through one repeated ``tf.data`` pipeline for the whole fit
    (:func:`~covidxray.data.batches.repeated_tf_dataset`: no pipeline restart, and no idle
    cores, at each epoch); on JAX and torch, to ``model.fit`` as they are. ``skip_epochs``: on
    TensorFlow, start from the order of that epoch (a resumed run continues the same sequence).
    """
    if keras.backend.backend() == "tensorflow":
        dataset = repeated_tf_dataset(x, y, batch_size, seed=seed, class_weight=class_weight, skip_epochs=skip_epochs)
        return model.fit(dataset, epochs=epochs, steps_per_epoch=-(-len(y) // batch_size),
                         callbacks=list(callbacks), verbose=verbose, shuffle=False)  # the dataset shuffles
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, class_weight=class_weight,
                     callbacks=list(callbacks), verbose=verbose, shuffle=True)


def learning_rate_schedule(config: TrainConfig, train_size: int):
    """Linear warm-up over the first epoch, then cosine decay to zero at the last epoch."""
    steps_per_epoch = max(1, -(-train_size // config.batch_size))
    total = steps_per_epoch * config.epochs
    warmup = min(steps_per_epoch, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate, decay_steps=max(1, total - warmup),
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
    )


def evaluate_splits(model: keras.Model, data: PreparedData, config: TrainConfig) -> tuple[dict, np.ndarray]:
    """Calibrate on validation data, then score every split; returns the metrics and the test probabilities.

    Every split is scored with the run's calibration (temperature, and the COVID threshold when
    a target sensitivity was asked for), as ``predict`` and ``evaluate`` will use it. Intervals
    resample patients; the test split is broken down by source when it holds several.
    """
    raw = {split: predict_arrays(model, data.part(split)[0]) for split in SPLITS}
    y = {split: data.part(split)[1] for split in SPLITS}
    calibration = fit_calibration(y["validation"], raw["validation"], data.classes, config.target_sensitivity)
    metrics = {split: score(y[split], raw[split], data.table[data.mask(split)], data.classes, calibration,
                            by_source=split == "test", seed=config.seed)
               for split in SPLITS}
    metrics["calibration"] = {
        **calibration.to_dict(),
        **{split: calibration_summary(y[split], raw[split], calibration) for split in ("validation", "test")},
    }
    return metrics, scale(raw["test"], calibration.temperature)


def train(config: TrainConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False,
          verbose: int = 1, progress: bool | None = None) -> dict:
    """The whole pipeline: returns ``metrics.json``'s content and writes the run directory.

    ``resume``: continue the interrupted run in ``out`` from its last finished epoch; ``config``
    must then be the run's own (``config.json``; only ``cache_dir`` may differ).
    """
    config = config.resolve()
    run = rundir.RunDir(out)
    if resume:
        check_resumable(run)
        saved = run.load_config()
        if replace(saved, cache_dir=config.cache_dir) != config:
            raise CovidXrayError(f"{run.file(rundir.CONFIG)}: the settings differ from the run's own; resume takes them from there")
        run.remove_temporaries()
    else:
        run.refuse_to_replace(overwrite)
    if config.distribute == "data-parallel":
        data_parallel(config.batch_size, config.devices)  # a backend or device problem fails before any file is written
    started = time.perf_counter()
    data = prepare_data(config, progress=progress)
    decode_seconds = time.perf_counter() - started
    if resume:
        _check_same_split(run, data, config.data)
    else:
        run.create()
        config.save(run.file(rundir.CONFIG))
        rundir.write_csv(run.file(rundir.SPLIT), data.table)
    training = fit(config, data, run, verbose=verbose)
    model = run.load_model()
    metrics, test_probabilities = evaluate_splits(model, data, config)
    run.write_json(rundir.CALIBRATION, Calibration.from_dict(metrics["calibration"]).to_dict())
    metrics["run"] = {
        **training,
        "model": config.model, "task": config.task, "image_size": config.image_size,
        "parameters": int(model.count_params()), "backend": keras.backend.backend(),
        "data_seconds": round(decode_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
        "images": {split: int((data.table["split"] == split).sum()) for split in SPLITS},
        "images_without_patient_id": int(without_patient_id(data.table).sum()),
        "group_by": config.group_by, "blank_lungs": config.blank_lungs,
        "sources": {str(k): int(v) for k, v in data.table["source"].value_counts().items()},
        "confounding": confounding_warning(data.table["label"], data.table["source"]),
        "skipped": data.skipped,
        "resumed": resume,
    }
    write_figures_and_report(run, config, data, metrics, test_probabilities, model=model)
    run.write_json(rundir.METRICS, metrics)  # last: metrics.json marks a complete run
    shutil.rmtree(run.file(rundir.BACKUP))  # nothing left to resume
    return metrics


def _check_same_split(run: rundir.RunDir, data: PreparedData, where) -> None:
    saved = pd.read_csv(run.require(rundir.SPLIT))
    if list(saved["path"]) != list(data.table["path"]) or list(saved["split"]) != list(data.table["split"]):
        raise DatasetError(f"{where}: the images differ from those in {run.file(rundir.SPLIT)}; "
                           "resume needs the same dataset (or start a new run)")


def balanced_class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """Loss weights inversely proportional to class frequency (1.0 for classes absent from ``y``)."""
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights)} | {c: 1.0 for c in range(num_classes) if c not in present}
