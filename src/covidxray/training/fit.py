"""Build, compile and fit a classifier on a prepared dataset: the optimizer (:mod:`covidxray.training.optimizer`,
shared with the lung U-Net), class weights and input pipeline. The checkpoint, early stopping and backup
around ``model.fit`` are the run loop's (:mod:`covidxray.training.loop`, shared with the lung U-Net).

Optional parts of the fit are handlers, as in MONAI's ``monai/handlers``: :func:`handlers` picks them
from the config and each attaches to the :class:`FitState` before the run loop starts (two-stage
fine-tuning's stage one, :class:`TwoStage`; the source head,
:class:`~covidxray.training.adversary.SourceAdversary`). The fit itself has no branch for any of them."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from covidxray import rundir
from covidxray.config import Runtime, TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.inference.engines import device_count
from covidxray.models import create_model
from covidxray.models.finetune import freeze_backbone, unfreeze_top
from covidxray.training.adversary import SourceAdversary
from covidxray.training.batches import ShuffledBatches, fit_arrays
from covidxray.training.callbacks import PreciseValidation
from covidxray.training.data import PreparedData
from covidxray.training.distribute import data_parallel, process_slice
from covidxray.training.loop import RunLoop
from covidxray.training.optimizer import adam, steps_per_epoch
from covidxray.training.tracking import Tracker

log = logging.getLogger(__name__)

#: Training images used to recompute batch-norm statistics after each epoch.
CALIBRATION_IMAGES = 256
#: Stage two of two-stage fine-tuning (--head-epochs) peaks at this share of --learning-rate.
FINE_TUNE_RATE = 0.1


def build_model(config: TrainConfig, train_size: int, runtime: Runtime | None = None) -> keras.Model:
    """Create and compile the model of ``config`` (resolved) for ``train_size`` training images, computing
    as ``runtime`` says (default: :class:`~covidxray.config.Runtime`'s, resolved).

    With ``config.head_epochs`` (two-stage fine-tuning) the model is compiled for stage two: the
    backbone's top blocks train (:func:`~covidxray.models.finetune.unfreeze_top`), at
    :data:`FINE_TUNE_RATE` times the learning rate; :func:`train_head` runs stage one before the fit.
    """
    runtime = _resolved(runtime, config)
    _check_backend(runtime)
    keras.utils.set_random_seed(config.seed)
    model = _create(config, runtime)
    if config.head_epochs:
        unfreeze_top(model)
    _compile(model, config, runtime, train_size, _rate(config))
    return model


def _resolved(runtime: Runtime | None, config: TrainConfig) -> Runtime:
    return (runtime or Runtime()).resolve(config)


def _rate(config: TrainConfig) -> float:
    """The share of ``--learning-rate`` the fit (stage two, with ``head_epochs``) peaks at."""
    return FINE_TUNE_RATE if config.head_epochs else 1.0


def _compile(model: keras.Model, config: TrainConfig, runtime: Runtime, train_size: int, rate: float = 1.0,
             epochs: int | None = None, loss="sparse_categorical_crossentropy", metrics=None) -> None:
    model.compile(optimizer=_optimizer(config, train_size, rate, epochs), loss=loss,
                  metrics=["accuracy"] if metrics is None else metrics, jit_compile=runtime.jit_compile,
                  steps_per_execution=runtime.steps_per_execution)


def train_head(model: keras.Model, config: TrainConfig, x, y, class_weight, batches: ShuffledBatches | None,
               train_size: int, verbose: int = 1, runtime: Runtime | None = None) -> None:
    """Stage one of two-stage fine-tuning: ``config.head_epochs`` epochs of the head alone on the frozen
    backbone, at ``config.learning_rate``; then ``model`` is compiled again for stage two as
    :func:`build_model` left it (a fresh optimizer for the layers stage two trains).

    Stage one keeps no checkpoint or backup: a run cut short during it starts it again."""
    runtime = _resolved(runtime, config)
    trainable = {id(layer): layer.trainable for layer in _all_layers(model)}
    freeze_backbone(model)
    _compile(model, config, runtime, train_size, epochs=config.head_epochs)
    if verbose:
        log.info("stage one: %d epochs of the head on the frozen backbone", config.head_epochs)
    if batches is None:
        fit_arrays(model, x, y, epochs=config.head_epochs, batch_size=config.batch_size, class_weight=class_weight,
                   verbose=verbose, seed=config.seed)
    else:
        batches.start_at(0)
        model.fit(batches, epochs=config.head_epochs, verbose=verbose, shuffle=False)
    for layer in _all_layers(model):
        layer.trainable = trainable[id(layer)]
    _compile(model, config, runtime, train_size, _rate(config))


def _all_layers(model: keras.Model) -> list:
    nested = [model]
    for layer in model.layers:
        nested += _all_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return nested


def _optimizer(config: TrainConfig, train_size: int, rate: float = 1.0, epochs: int | None = None
               ) -> keras.optimizers.Optimizer:
    """Adam peaking at ``rate`` times ``config.learning_rate`` on ``config.lr_schedule`` (cosine: one
    epoch of warm-up), with the schedule's weight decay (:func:`~covidxray.training.optimizer.adam`)."""
    return adam(config.learning_rate * rate, steps_per_epoch(train_size, config.batch_size), epochs or config.epochs,
                kind=config.lr_schedule, weight_decay=config.weight_decay)


def check_model(config: TrainConfig, runtime: Runtime | None = None) -> None:
    """Raise now what :func:`build_model` would raise once the data is read and the run folder made:
    a setting the backend refuses, a weights file that does not fit (the model is built with its
    weights once, and dropped)."""
    runtime = _resolved(runtime, config)
    _check_backend(runtime)
    if config.weights not in (None, "none", "None"):
        _create(config, runtime)


def _check_backend(runtime: Runtime) -> None:
    if runtime.steps_per_execution > 1 and keras.backend.backend() == "torch":
        raise CovidXrayError("--steps-per-execution must be 1 with the PyTorch backend (Keras runs it eagerly)")


def _create(config: TrainConfig, runtime: Runtime) -> keras.Model:
    return create_model(config.model, num_classes=len(config.classes), image_size=config.image_size,
                        weights=config.weights, augment=config.augment, seed=config.seed,
                        dtype_policy=runtime.mixed_precision)


def fit(config: TrainConfig, data: PreparedData, run: rundir.RunDir, runtime: Runtime | None = None,
        verbose: int = 1, tracker: Tracker | None = None) -> dict:
    """Build, compile and fit the model; the epoch with the best validation accuracy is saved (the
    last epoch without a validation split). Each epoch's logs go to ``history.csv``, to TensorBoard
    (``RUN/tensorboard/``) and to ``tracker`` (:mod:`covidxray.training.tracking`).

    Where ``run`` holds the backup of an interrupted fit, it continues from its last finished epoch.
    ``runtime`` (default: :class:`~covidxray.config.Runtime`'s): with ``runtime.devices`` above one the
    model is built and trained under a ``keras.distribution.DataParallel`` over that many devices (JAX backend).
    """
    runtime = _resolved(runtime, config)
    distribution = data_parallel(config.batch_size, runtime.devices) if runtime.data_parallel else None
    with distribution.scope() if distribution else contextlib.nullcontext():
        return {**_fit(config, runtime, data, run, verbose, distributed=distribution is not None,
                       tracker=tracker or Tracker()),
                "devices": device_count(distribution)}


def training_batches(config: TrainConfig, x, y, class_weight, distributed: bool) -> ShuffledBatches | None:
    """Batches from a PyDataset where the arrays cannot go to ``model.fit`` as they are: images
    streamed from shards, or whole batches only, as data-parallel training needs. None otherwise."""
    if isinstance(x, np.ndarray) and not distributed:
        return None
    index, count = process_slice() if distributed else (0, 1)
    return ShuffledBatches(x, y, config.batch_size, seed=config.seed, class_weight=class_weight,
                           drop_remainder=distributed, process_index=index, process_count=count)


@dataclass
class FitState:
    """What the run loop trains, as the handlers leave it: ``trainer`` (the classifier ``model``, or a
    larger model around it) on the training images ``x`` with ``targets`` (default: the labels ``y``),
    weighted by ``class_weight``, streamed by ``batches`` where not None. ``callbacks`` run first at
    each epoch's end. ``resumed``: the run continues from its backup."""

    config: TrainConfig
    runtime: Runtime
    model: keras.Model
    x: np.ndarray
    y: np.ndarray
    sources: np.ndarray
    class_weight: dict[int, float] | np.ndarray | None
    batches: ShuffledBatches | None
    train_size: int
    resumed: bool
    verbose: int = 1
    trainer: keras.Model | None = None
    targets: np.ndarray | dict | None = None
    callbacks: list = field(default_factory=list)

    def __post_init__(self):
        self.trainer = self.model if self.trainer is None else self.trainer
        self.targets = self.y if self.targets is None else self.targets

    def compile(self, model: keras.Model, loss, metrics) -> None:
        """Compile ``model`` with the fit's optimizer (:func:`build_model`'s: stage two's rate with
        ``head_epochs``) and runtime."""
        _compile(model, self.config, self.runtime, self.train_size, _rate(self.config), loss=loss, metrics=metrics)


class TwoStage:
    """Two-stage fine-tuning (``--head-epochs``): :func:`train_head` (stage one) before the fit, which
    is stage two as :func:`build_model` compiled it. A resumed run is past stage one: its backup
    holds stage two."""

    def attach(self, fit: FitState) -> None:
        if not fit.resumed:
            train_head(fit.model, fit.config, fit.x, fit.y, fit.class_weight, fit.batches, fit.train_size,
                       fit.verbose, fit.runtime)


def handlers(config: TrainConfig) -> list:
    """The optional parts of the fit that ``config`` asks for, in the order they attach."""
    return ([TwoStage()] if config.head_epochs else []) + (
        [SourceAdversary(config.source_adversary)] if config.source_adversary else [])


def _fit(config: TrainConfig, runtime: Runtime, data: PreparedData, run: rundir.RunDir, verbose: int,
         distributed: bool, tracker: Tracker) -> dict:
    x_train, y_train = data.part("train")
    sources = data.table.loc[data.mask("train"), "source"].to_numpy()
    class_weight = training_weights(config, y_train, sources)
    batches = training_batches(config, x_train, y_train, class_weight, distributed)
    train_size = len(x_train) if batches is None else len(batches) * config.batch_size
    model = build_model(config, train_size, runtime)
    loop = RunLoop(run, epochs=config.epochs, monitor="val_accuracy", has_validation=config.has_validation,
                   patience=config.patience)
    state = FitState(config, runtime, model, x_train, y_train, sources, class_weight, batches, train_size,
                     resumed=loop.state is not None, verbose=verbose)
    for handler in handlers(config):
        handler.attach(state)
    rng = np.random.default_rng(config.seed)
    calibration = x_train[np.sort(rng.permutation(len(x_train))[:CALIBRATION_IMAGES])]
    own = [*state.callbacks, PreciseValidation(calibration, *data.part("validation"), classifier=model)]
    if batches is None:
        fitted = loop.fit(state.trainer, (x_train, state.targets), saved=model, callbacks=own, tracker=tracker,
                          verbose=verbose, batch_size=config.batch_size, class_weight=state.class_weight,
                          seed=config.seed)
    else:  # the PyDataset shuffles, from the seed
        fitted = loop.fit(state.trainer, batches, saved=model, callbacks=own, tracker=tracker, verbose=verbose)
    seconds, epochs_run = fitted["fit_seconds"], len(fitted["history"])
    return {"best_epoch": fitted["best_epoch"], "fit_seconds": round(seconds, 1), "epochs_run": epochs_run,
            "train_images_per_second": round(len(x_train) * epochs_run / max(seconds, 1e-9), 1)}


def training_weights(config: TrainConfig, y: np.ndarray, sources: np.ndarray) -> dict[int, float] | np.ndarray | None:
    """The loss weights of the training images: per class (``class_weights``), or per image with
    ``balance_sources`` (:func:`source_balanced_weights`), or None."""
    if config.balance_sources:
        return source_balanced_weights(y, sources, balance_classes=config.class_weights)
    return balanced_class_weights(y, len(config.classes)) if config.class_weights else None


def source_balanced_weights(y: np.ndarray, sources: np.ndarray, *, balance_classes: bool = True) -> np.ndarray:
    """One weight per image, mean 1: within each class every source weighs the same in all, and with
    ``balance_classes`` every class too. 19 normal X-rays of one source then count as much as 1,000
    of another, so the model cannot tell normal from the rest by the larger source's look."""
    y = np.asarray(y)
    sources = np.asarray(sources).astype(str)
    weights = np.zeros(len(y), dtype=np.float64)
    classes = np.unique(y)
    for c in classes:
        in_class = y == c
        cells = np.unique(sources[in_class])
        class_total = 1.0 / len(classes) if balance_classes else in_class.mean()
        for source in cells:
            cell = in_class & (sources == source)
            weights[cell] = class_total / len(cells) / cell.sum()
    return (weights * len(y)).astype(np.float32)


def balanced_class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """Loss weights inversely proportional to class frequency (1.0 for classes absent from ``y``)."""
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights)} | {c: 1.0 for c in range(num_classes) if c not in present}
