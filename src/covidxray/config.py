"""Training settings, each declared once: a dataclass field with its help, choices and bounds.

:class:`TrainConfig` (the classifier: ``train``, ``cv``, ``probe``) and :class:`LungTrainConfig`
(the lung U-Net: ``lungs train``) are declared the same way: the command line's options are
generated from their fields (:mod:`covidxray.cli.options`), ``check`` enforces their choices and
bounds, and every run writes its settings (``config.json``, ``segmenter.json``) so that it can be
repeated. :class:`Runtime` (how and where a run computes: precision, devices, steps per execution,
cache) and :class:`Tracking` (where it is logged) are declared the same way but are no settings of
what a run computes. Importing this module does not import Keras.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from covidxray.data.blanking import DEFAULT_FRACTION
from covidxray.data.lungviews import BLANK_REGIONS
from covidxray.data.splits import GROUP_BY
from covidxray.errors import CovidXrayError
from covidxray.labels import TASKS, task_classes
from covidxray.models.registry import DEFAULT_MODEL, list_models, model_spec

#: The commands that train a model, and so take training settings.
TRAIN, CV, PROBE, LUNGS_TRAIN = "train", "cv", "probe", "lungs train"
TRAINING_COMMANDS = (TRAIN, CV, PROBE)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024
MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")
AUTO = "auto"
#: Settings a resumed run may change: where it caches decoded images, not what it computes.
MAY_CHANGE_ON_RESUME = ("cache_dir",)
#: Names an older config.json used for a setting, and the name it has now.
RENAMED = {"blank_lungs": "blank_fraction"}
LR_SCHEDULES = ("cosine", "one-cycle")
#: Adam's decoupled weight decay (AdamW) per --lr-schedule: one-cycle is fastai's fit_one_cycle, with its
#: default weight decay 0.01; cosine trains plain Adam. Not a setting: no measurement showed it helps.
WEIGHT_DECAY = {"cosine": 0.0, "one-cycle": 0.01}
#: The entry of config.json that records the run's resolved :class:`Runtime`.
RUNTIME = "runtime"
#: Where a training run is also logged (--track); TensorBoard logs are written in every run.
TRACKERS = ("none", "mlflow")
#: How a model sees an image (--lungs): the whole film or the box around the lungs;
#: :class:`covidxray.inference.preprocess.Preprocessing` is the one place that acts on it.
LUNG_MODES = ("none", "crop")
#: The smallest validation share other than none (0).
MIN_VAL_FRACTION = 0.02
#: Epochs of stage one (the head alone) when a pretrained backbone is fine-tuned in two stages (--head-epochs).
DEFAULT_HEAD_EPOCHS = 5
#: Named sets of settings, chosen in one word (``--recipe``, which is no setting of its own: it fills others);
#: an option given beside it wins.
#: darkcovidnet-paper: Ozturk et al. 2020 as the authors' fastai v1 code trains it
#: (muhammedtalo/COVID-19): DarkCovidNet at 256 x 256, batch 32, 100 epochs of one-cycle Adam
#: peaking at 3e-3 (with fastai's default decoupled weight decay 0.01: :data:`WEIGHT_DECAY`), unweighted loss, image-level
#: folds. Nothing stops early: the paper reports its last epoch.
#: source-robust: the defaults with the setting for several sources that scored best on sources
#: held out whole (leave-one-source-out COVID AUC, paired against the previous recipe, the source
#: head; docs/evaluation.md): the lung crop. The shipped default preset is trained with it.
RECIPES = {
    "darkcovidnet-paper": {"model": "darkcovidnet", "image_size": 256, "batch_size": 32, "epochs": 100,
                           "learning_rate": 3e-3, "lr_schedule": "one-cycle",
                           "class_weights": False, "patience": 100, "group_by": "none"},
    "source-robust": {"lungs": "crop"},
}


def option_name(name: str) -> str:
    """The command-line option of a setting: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def setting(default, help: str, *, kind: type | None = None, choices=None, low=None, high=None,
            low_open: bool = False, high_open: bool = False, commands=TRAINING_COMMANDS, flag: str | None = None,
            aliases: tuple[str, ...] = (), command_defaults: dict | None = None, metavar: str | None = None):
    """A dataclass field that carries everything the command line and the checks need.

    ``kind``: the value's type on the command line (default: the default's type); ``choices``: a
    sequence or a function returning one; ``low``/``high``: bounds (``*_open``: excluded);
    ``commands``: which commands offer it (empty: library only); ``flag``: the option for a
    boolean (``--no-augment`` turns ``augment`` off); ``aliases``: older option names still
    accepted; ``command_defaults``: a default of its own per command (``probe`` blanks by default).
    """
    metadata = {"help": help, "kind": kind or type(default), "choices": choices, "low": low, "high": high,
                "low_open": low_open, "high_open": high_open, "commands": tuple(commands), "flag": flag,
                "aliases": tuple(aliases), "command_defaults": command_defaults or {}, "metavar": metavar}
    if isinstance(default, list | tuple | dict):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that decides what a training run computes."""

    data: str | list[str] = setting(
        "", "class folders, a CSV manifest (path,label[,patient_id,source]) or an ieee8023 folder; repeat to "
        "combine datasets (an image they share is counted once); or one shard folder written by covidxray data "
        "shard (streamed from disk)", kind=str, metavar="PATH")
    task: str = setting("three-class", "binary (covid vs normal) or three-class", choices=tuple(TASKS))
    model: str = setting(DEFAULT_MODEL, "a model of `covidxray models`", choices=list_models)
    image_size: int | None = setting(None, "input side in pixels (default: the model's own)", kind=int,
                                     low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE)
    weights: str = setting("none", "none, imagenet (the backbone models) or a weights file; a PyTorch .pth/.pt for "
                           "efficientnet_lite0 and densenet121_xrv (torchxrayvision's DenseNet121) is converted",
                           metavar="WEIGHTS")
    head_epochs: int | None = setting(
        None, "two-stage fine-tuning of a pretrained backbone: train only the new head for this many epochs "
        "with the backbone frozen, then its top quarter (batch norm excepted) for --epochs more at a tenth of "
        f"--learning-rate (default: {DEFAULT_HEAD_EPOCHS} with --weights imagenet or a file on a backbone model, "
        "else 0; 0: one stage, every layer trains)", kind=int, low=0)
    epochs: int = setting(30, "epochs (the learning rate decays to zero at the last; early stopping may end sooner)",
                          low=1)
    batch_size: int = setting(32, "images per training step", low=1)
    learning_rate: float = setting(1e-3, "peak rate of Adam (see --lr-schedule)", low=0.0, low_open=True)
    lr_schedule: str = setting(
        "cosine", "cosine: plain Adam, one epoch of linear warm-up, then cosine decay to 0; one-cycle: fastai's "
        "fit_one_cycle (with a linear rise): Adam with decoupled weight decay 0.01 (AdamW), 30%% of the steps "
        "rising from rate/25 to the rate, then cosine annealing to rate/250000", choices=LR_SCHEDULES)
    patience: int = setting(10, "stop after this many epochs without better validation accuracy, watched from the "
                            "middle of training on", low=0)
    class_weights: bool = setting(True, "weight the loss by inverse class frequency", flag="--no-class-weights")
    balance_sources: bool = setting(False, "weight the loss so that within each class every source counts the same "
                                    "(with the class weights: every source-and-class cell)", flag="--balance-sources")
    source_adversary: float = setting(
        0.0, "train against a source head: a head that tells each image's source within its class reads the "
        "features through a gradient reversal of this weight, which pushes them to carry less of the source "
        "(0: off; e.g. 0.1)", low=0.0, metavar="WEIGHT")
    augment: bool = setting(True, "rotation, zoom, shift and contrast inside the model", flag="--no-augment")
    val_fraction: float = setting(
        0.15, "share of the training data (patients) held out for validation; 0: none, as DarkCovidNet's paper "
        "trains: every training image is fitted, the last epoch's model is kept (no best checkpoint, no early "
        "stopping), probabilities stay uncalibrated (temperature 1) and no image is flagged as unlike the training "
        "data", low=0.0, high=0.5)
    test_fraction: float = setting(0.15, "share of the data (patients) held out for testing", low=0.02, high=0.5,
                                   commands=(TRAIN, PROBE))
    seed: int = setting(0, "seeds the split, the weights and the augmentation")
    group_by: str = setting("patient", "patient: no patient in two splits; none: image-level, as most published "
                            "results (inflated); source (cv): leave-one-source-out, each fold tests on one source "
                            "held out whole", choices=GROUP_BY)
    target_sensitivity: float | None = setting(
        None, "choose the COVID decision threshold on validation data for this sensitivity, e.g. 0.95", kind=float,
        low=0.0, high=1.0, low_open=True)
    blank_fraction: float = setting(
        0.0, "shortcut probe: blank this central fraction of every image's side, in training and testing "
        "(0: off; see covidxray probe)", low=0.0, high=1.0, high_open=True, commands=(TRAIN, PROBE),
        aliases=("--blank-lungs", "--fraction"), command_defaults={PROBE: DEFAULT_FRACTION}, metavar="FRACTION")
    blank_region: str = setting(
        "box", "what the shortcut probe blanks: box (the central --blank-fraction square), lungs (the segmented "
        "lungs: only the rest is visible) or outside-lungs (only the lungs are visible)", choices=BLANK_REGIONS,
        commands=(TRAIN, PROBE), aliases=("--region",))
    lungs: str = setting(
        "none", "what the model sees: none (the whole image) or crop (the box around both lungs plus a margin, "
        "resized); saved with the run and applied by predict, evaluate, serve and export", choices=LUNG_MODES)
    lung_segmenter: str | None = setting(
        None, "the lung segmenter for --lungs, the lung probes and heat-in-lungs: a folder written by covidxray "
        "lungs train, or preset:NAME (default: the shipped preset)", kind=str, metavar="DIR")

    @classmethod
    def for_command(cls, command: str, recipe: str | None = None, **values) -> TrainConfig:
        """The settings of ``command`` (its own defaults) with ``values`` given; ``recipe`` (a name of
        :data:`RECIPES`) fills the settings it names that ``values`` does not give."""
        defaults = {f.name: f.metadata["command_defaults"][command] for f in fields(cls)
                    if command in f.metadata["command_defaults"]}
        return cls(**{**defaults, **recipe_settings(recipe), **values})

    @property
    def weight_decay(self) -> float:
        """Adam's decoupled weight decay, implied by the schedule (:data:`WEIGHT_DECAY`; 0: plain Adam)."""
        return WEIGHT_DECAY[self.lr_schedule]

    def check(self) -> None:
        """Raise a :class:`CovidXrayError` naming the option for a value outside its choices or bounds."""
        for f in fields(self):
            _check_value(f, getattr(self, f.name))
        if not self.data:
            raise CovidXrayError("--data is required: a dataset folder or manifest")
        if 0 < self.val_fraction < MIN_VAL_FRACTION:
            raise CovidXrayError(f"--val-fraction must be 0 (no validation split) or at least {MIN_VAL_FRACTION}; "
                                 f"got {self.val_fraction}")
        if self.head_epochs and not model_spec(self.model).imagenet_weights:
            raise CovidXrayError(f"--head-epochs trains the head of a pretrained backbone; model {self.model!r} has "
                                 "none (use a backbone of `covidxray models`, or --head-epochs 0)")
        if self.head_epochs and self.weights in ("none", "None"):
            raise CovidXrayError("--head-epochs fine-tunes pretrained weights; give --weights imagenet or a file, "
                                 "or leave --head-epochs out")
        if not self.val_fraction and self.target_sensitivity is not None:
            raise CovidXrayError("--target-sensitivity chooses the COVID threshold on the validation split; "
                                 "give --val-fraction above 0 or leave it out")

    @property
    def classes(self) -> tuple[str, ...]:
        """The task's classes, in the model's output order (``config.json`` records them too)."""
        return task_classes(self.task)

    @property
    def has_validation(self) -> bool:
        """Whether the run holds out a validation split (``--val-fraction 0``: no)."""
        return self.val_fraction > 0

    @property
    def blanking(self) -> str | None:
        """What is blanked in every image: ``"box"``, ``"lungs"``, ``"outside-lungs"``, or None."""
        if self.blank_region != "box":
            return self.blank_region
        return "box" if self.blank_fraction else None

    def resolve(self) -> TrainConfig:
        """Check the settings and fill the derived ones (image size, head epochs, the data as a path or list)."""
        from covidxray.data.shards import shard_image_size

        self.check()
        spec = model_spec(self.model)
        stored = shard_image_size(self.data)  # a shard folder holds one image size
        if stored is not None and self.image_size not in (None, stored):
            raise CovidXrayError(f"{self.data}: the shards hold {stored}px images; train with --image-size {stored} "
                                 f"or shard again with --image-size {self.image_size}")
        if stored is not None and self.source_adversary:
            raise CovidXrayError(f"{self.data}: --source-adversary trains on images in memory, not streamed from "
                                 "shards; give the dataset folders instead")
        size = stored or (spec.image_size if self.image_size is None else self.image_size)
        head_epochs = self.head_epochs
        if head_epochs is None:
            pretrained = spec.imagenet_weights and self.weights not in ("none", "None")
            head_epochs = DEFAULT_HEAD_EPOCHS if pretrained else 0
        return replace(self, image_size=size, data=_one_or_list(self.data), head_epochs=head_epochs)

    def conflicts(self, values: dict) -> list[str]:
        """The settings in ``values`` that differ from this run's, as ``--option value (the run has ...)``.

        The one rule for resuming (library and command line alike): a resumed run keeps its own
        settings; only :data:`MAY_CHANGE_ON_RESUME` may differ. Dataset paths are compared resolved.
        """
        return _conflicts(self, values)

    def to_dict(self) -> dict:
        """The settings with what they imply (the task's classes, the schedule's weight decay), as
        ``config.json`` records them."""
        return {**asdict(self), "weight_decay": self.weight_decay, "classes": list(self.classes)}

    def save(self, path: Path, runtime: Runtime | None = None) -> None:
        """Write ``config.json``: :meth:`to_dict`, and the resolved ``runtime`` the run computes with."""
        from covidxray.files import atomic_write_text

        record = self.to_dict() if runtime is None else {**self.to_dict(), RUNTIME: runtime.record()}
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> TrainConfig:
        """Settings read back from ``config.json``, checked as the command line's are (types, choices,
        bounds, classes of the task); unknown keys are ignored (the runtime, :class:`Runtime`'s; an older
        file's recipe and weight decay, no settings now), renamed ones mapped; a run trained with a removed
        setting (--intensity, --lungs mask) is refused (:func:`refuse_removed_settings`)."""
        if not isinstance(values, dict):
            raise CovidXrayError(f"{where}: not a covidxray run configuration (a JSON object is expected); "
                                 "retrain the run")
        refuse_removed_settings(values, where)
        values = {RENAMED.get(k, k): v for k, v in values.items()}
        known = {f.name: f for f in fields(cls)}
        stored = values.get("classes", [])  # derived from the task; a run's file records them
        values = {k: v for k, v in values.items() if k in known}
        values.setdefault("head_epochs", 0)  # a run from before two-stage fine-tuning trained in one stage
        try:
            for name, value in values.items():
                _check_type(known[name], value)
            if not isinstance(stored, list | tuple) or not all(isinstance(c, str) for c in stored):
                raise CovidXrayError(f"classes must be a list of class names, not {stored!r}")
            config = cls(**values)
            config.check()
            if stored and tuple(stored) != config.classes:
                raise CovidXrayError(f"classes {list(stored)} are not those of the task {config.task} "
                                     f"({list(config.classes)})")
        except CovidXrayError as error:
            raise CovidXrayError(f"{where}: not a valid covidxray run configuration: {error}; retrain the run") from None
        return config

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()), str(path))


def recipe_help(name: str) -> str:
    """A recipe's settings as options: ``--model darkcovidnet, ..., --no-class-weights``."""
    flags = {"class_weights": "--no-class-weights"}
    return ", ".join(flags.get(k, option_name(k)) if isinstance(v, bool) else f"{option_name(k)} {v}"
                     for k, v in RECIPES[name].items())


def recipe_settings(recipe: str | None) -> dict:
    """The settings ``--recipe`` fills (none for None); an unknown name fails with the known ones."""
    if recipe is not None and recipe not in RECIPES:
        raise CovidXrayError(f"--recipe must be one of {', '.join(RECIPES)}; got {recipe!r}")
    return dict(RECIPES.get(recipe, {}))


def refuse_removed_settings(values, where: str = "config") -> None:
    """Raise a :class:`CovidXrayError` where a run's recorded settings ``values`` (its ``config.json``,
    ``metrics.json``'s run entry, an ONNX export's ``preprocessing`` metadata) say its inputs were made
    by a removed setting: intensity harmonisation (the former ``--intensity``; absent, null or
    ``"none"`` passes) or every pixel outside the lungs set to 0 (the former ``--lungs mask``).
    Without it the run's model would be fed other pixels than it was trained on.

    The one place that refuses such a run: every reader of recorded settings calls it
    (:meth:`TrainConfig.from_dict`, :meth:`covidxray.inference.preprocess.Preprocessing.from_settings`,
    :class:`covidxray.inference.engines.OnnxModel`)."""
    values = values if isinstance(values, dict) else {}
    intensity = values.get("intensity")
    if intensity not in (None, "none"):
        removed = f"intensity harmonisation (--intensity {intensity})"
    elif values.get("lungs") == "mask":
        removed = "every pixel outside the lungs set to 0 (--lungs mask)"
    else:
        return
    raise CovidXrayError(f"{where}: this run was trained with {removed}, which was removed from covidxray (git "
                         "history keeps it, in the commits before its removal); retrain the run without it")


def stored_weight_decay_conflict(values: dict, where: str = "config") -> str | None:
    """Why a run whose ``config.json`` (``values``) holds a ``weight_decay`` other than its schedule now
    implies (:data:`WEIGHT_DECAY`: it trained with the former --weight-decay) cannot be resumed; None if it can.
    Other commands ignore the stored value: the run's model is what it is."""
    stored, schedule = values.get("weight_decay"), values.get("lr_schedule", "cosine")
    if stored is None or schedule not in WEIGHT_DECAY or stored == WEIGHT_DECAY[schedule]:
        return None
    return (f"{where}: the run trained with weight decay {stored:g}, but --lr-schedule {schedule} now implies "
            f"{WEIGHT_DECAY[schedule]:g} (--weight-decay is gone); it cannot be resumed, start a new run")


@dataclass
class Runtime:
    """How and where a run computes on this machine, not what it computes: the result is the same
    within each backend's tolerance. Not in :class:`TrainConfig`, so a reused fold or two runs are
    compared without it; a run records its resolved runtime in ``config.json`` (the ``"runtime"``
    entry, :meth:`record`: issue 33, the speed choice), and a resumed run computes with that one."""

    mixed_precision: str | None = setting(
        AUTO, "compute in 16-bit floats, keep weights in float32: auto (mixed_bfloat16 where it measured faster: "
        "darkcovidnet, TensorFlow, a CPU with AMX and no GPU; else float32), float32, mixed_bfloat16 "
        "or mixed_float16 (GPUs); the run stores what it used", kind=str,
        choices=(AUTO, "float32", *MIXED_PRECISION_POLICIES))
    jit_compile: bool | str = setting("auto", "XLA compilation (Keras's auto: where the backend supports it)",
                                      commands=())
    steps_per_execution: int = setting(1, "training steps per compiled call (more: less Python overhead per step, "
                                       "for fast GPUs)", low=1)
    devices: int | None = setting(
        1, "devices to train on: N >= 2 splits each batch over N devices, data-parallel (JAX backend: "
        "KERAS_BACKEND=jax; the library's None: every visible device)", kind=int, low=1, commands=(TRAIN,))
    cache_dir: str | None = setting(None, "decoded-image cache (default ~/.cache/covidxray)", kind=str, metavar="DIR")

    @property
    def data_parallel(self) -> bool:
        """Whether the run trains under a ``keras.distribution.DataParallel`` (several devices, or None: all)."""
        return self.devices != 1

    def check(self, config: TrainConfig | None = None) -> Runtime:
        """Raise a :class:`CovidXrayError` naming the option for a value outside its choices or bounds, or one
        that ``config`` cannot train with."""
        for f in fields(self):
            _check_value(f, getattr(self, f.name))
        if config is not None and config.source_adversary and self.data_parallel:
            raise CovidXrayError("--source-adversary trains in one process; leave out --devices")
        return self

    def resolve(self, config: TrainConfig) -> Runtime:
        """Checked, with ``auto`` precision resolved for ``config``'s model on this machine (idempotent)."""
        self.check(config)
        precision = self.mixed_precision
        if precision == AUTO:
            from covidxray.backend import auto_mixed_precision

            precision = auto_mixed_precision(model_spec(config.model).cpu_bfloat16)
        return replace(self, mixed_precision=precision or "float32")

    def conflicts(self, values: dict) -> list[str]:
        """As :meth:`TrainConfig.conflicts`: the runtime settings in ``values`` that a resumed run refuses."""
        return _conflicts(self, values)

    def record(self) -> dict:
        """What ``config.json``'s ``"runtime"`` entry holds."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> Runtime:
        """The runtime a run's ``config.json`` (``values``) records: its ``"runtime"`` entry, or an older
        file's top-level keys (``distribute`` and ``devices`` then merged: ``none`` is one device,
        ``data-parallel`` the devices it names, or every visible one)."""
        known = {f.name: f for f in fields(cls)}
        stored = values.get(RUNTIME)
        if stored is None:  # a run from before the runtime entry
            stored = {k: v for k, v in values.items() if k in known}
            if values.get("distribute", "none") == "none":
                stored["devices"] = 1
            else:
                stored.setdefault("devices", None)
            if stored.get("mixed_precision", AUTO) is None:
                stored["mixed_precision"] = "float32"  # what an older run's null meant
        if not isinstance(stored, dict):
            raise CovidXrayError(f"{where}: {RUNTIME} must be a JSON object, not {stored!r}; retrain the run")
        stored = {k: v for k, v in stored.items() if k in known}
        try:
            for name, value in stored.items():
                if value is not None or name != "devices":  # devices None: every visible device
                    _check_type(known[name], value)
            return cls(**stored).check()
        except CovidXrayError as error:
            raise CovidXrayError(f"{where}: not a valid covidxray run configuration: {error}; retrain the run") from None

    @classmethod
    def load(cls, path: Path) -> Runtime:
        return cls.from_dict(json.loads(Path(path).read_text()), str(path))


@dataclass
class Tracking:
    """Where a training run is logged besides its folder (``--track``). Not a setting of what the
    run computes: it is not saved in ``config.json``, and a resumed run or a reused fold may change it."""

    track: str = setting(
        "none", "also log the run to MLflow: its settings, metrics per epoch, test metrics, report and figures "
        "(pip install 'covidxray[mlflow]'; the store of MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db); "
        "TensorBoard logs are written in every run (RUN/tensorboard/)", choices=TRACKERS,
        commands=(*TRAINING_COMMANDS, LUNGS_TRAIN))

    def check(self) -> Tracking:
        for f in fields(self):
            _check_value(f, getattr(self, f.name))
        return self


def parse_widths(text: str) -> list[int]:
    """``--widths 8,16,32``: whole numbers separated by commas."""
    try:
        return [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise CovidXrayError(f"--widths {text}: give whole numbers separated by commas, e.g. 16,24,32,48,64") from None


@dataclass
class LungTrainConfig:
    """Every setting of ``covidxray lungs train``; stored in the run's ``segmenter.json``.

    The default architecture is the shipped preset's (docs/lungs.md: why this size and these widths).
    """

    data: list[str] = setting((), "folder with images/ and lung-masks/<stem>.png (e.g. ../shared/data/jsrt); repeat "
                              "to combine", kind=str, commands=(LUNGS_TRAIN,), metavar="PATH")
    image_size: int = setting(128, "side of the model's square input, a multiple of 2 to the number of --widths "
                              "less one", low=2, high=MAX_IMAGE_SIZE, commands=(LUNGS_TRAIN,))
    widths: tuple[int, ...] = setting((8, 16, 32, 48, 64), "filters per U-Net level, comma-separated, the last at the "
                                      "bottom", kind=str, commands=(LUNGS_TRAIN,), metavar="N,N,...")
    epochs: int = setting(48, "epochs (the learning rate decays to zero at the last)", low=1, commands=(LUNGS_TRAIN,))
    batch_size: int = setting(16, "images per training step", low=1, commands=(LUNGS_TRAIN,))
    learning_rate: float = setting(2e-3, "Adam's, decayed to zero along a cosine", low=0.0, high=1.0, low_open=True,
                                   high_open=True, commands=(LUNGS_TRAIN,))
    seed: int = setting(0, "seeds the split, the weights and the augmentation", commands=(LUNGS_TRAIN,))
    val_fraction: float = setting(0.15, "share of patients for validation", low=0.0, high=0.5, low_open=True,
                                  high_open=True, commands=(LUNGS_TRAIN,))
    test_fraction: float = setting(0.15, "share of patients held out for the test", low=0.0, high=0.5, low_open=True,
                                   high_open=True, commands=(LUNGS_TRAIN,))
    augment: bool = setting(True, "random affine maps of image and mask, gamma, blur and noise", flag="--no-augment",
                            commands=(LUNGS_TRAIN,))
    patience: int | None = setting(None, "stop after this many epochs without better validation Dice, watched from "
                                   "the middle of training on (default: every epoch runs)", kind=int, low=0,
                                   commands=(LUNGS_TRAIN,))
    threshold: float = setting(0.5, "probability above which a pixel is lung", low=0.0, high=1.0, low_open=True,
                               high_open=True, commands=())

    def __post_init__(self):
        if isinstance(self.widths, str):  # as the command line gives it
            self.widths = parse_widths(self.widths)

    def conflicts(self, values: dict) -> list[str]:
        """As :meth:`TrainConfig.conflicts`: the settings in ``values`` that a resumed run refuses."""
        given = LungTrainConfig(**{**asdict(self), **values})  # --widths as a run reads it
        return _conflicts(replace(self, widths=list(self.widths)),
                          {name: list(given.widths) if name == "widths" else value for name, value in values.items()})

    @classmethod
    def from_settings(cls, settings: dict, where: str) -> LungTrainConfig:
        """The settings a run's ``segmenter.json`` (``settings``) records under ``"training"``, checked."""
        training = settings.get("training") if isinstance(settings, dict) else None
        known = {f.name for f in fields(cls)}
        if not isinstance(training, dict) or not training.get("data"):
            raise CovidXrayError(f"{where}: no training settings; not a run of covidxray lungs train")
        return cls(**{k: v for k, v in training.items() if k in known}).check()

    def check(self) -> LungTrainConfig:
        """Raise a :class:`CovidXrayError` naming the option for a value outside its bounds."""
        for f in fields(self):
            _check_value(f, getattr(self, f.name))
        depth = len(self.widths) - 1
        if depth < 1 or min(self.widths) < 1:
            raise CovidXrayError(f"--widths needs two or more positive numbers; got {list(self.widths)}")
        if self.image_size < 2 ** depth or self.image_size % 2 ** depth:
            raise CovidXrayError(f"--image-size must be a multiple of {2 ** depth} (2 to the number of --widths less "
                                 f"one); got {self.image_size}")
        if not self.data:
            raise CovidXrayError("--data is required: a folder with images/ and lung-masks/")
        return self


def _conflicts(settings, values: dict) -> list[str]:
    found = []
    for name, value in values.items():
        if name in MAY_CHANGE_ON_RESUME or name == "classes":  # derived from the task
            continue
        shown, mine = value, getattr(settings, name)
        if name == "data":
            shown = _one_or_list(value)
            value, mine = _resolved_paths(value), _resolved_paths(mine)
        if value != mine:
            found.append(f"{option_name(name)} {shown} (the run has {getattr(settings, name)})")
    return found


def check_setting(name: str, value) -> None:
    """Check one setting's value against its declared choices and bounds (for options outside a config)."""
    _check_value(next(f for f in fields(TrainConfig) if f.name == name), value)


def choices_of(f) -> tuple | None:
    choices = f.metadata["choices"]
    return tuple(choices()) if callable(choices) else choices


def _check_value(f, value) -> None:
    meta, option = f.metadata, option_name(f.name)
    if value is None:
        return
    choices = choices_of(f)
    if choices is not None and value not in choices:
        raise CovidXrayError(f"{option} must be one of {', '.join(map(str, choices))}; got {value!r}")
    low, high = meta["low"], meta["high"]
    if low is None and high is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CovidXrayError(f"{option} must be a number; got {value!r}")
    too_low = low is not None and (value <= low if meta["low_open"] else value < low)
    too_high = high is not None and (value >= high if meta["high_open"] else value > high)
    if too_low or too_high:
        raise CovidXrayError(f"{option} must be {_range_text(meta)}; got {value}")


def _check_type(f, value) -> None:
    """A value read from a file has the type its setting takes (None only where the default is None)."""
    kind = f.metadata["kind"]
    if value is None:
        if f.default is not None:
            raise CovidXrayError(f"{f.name} is null")
        return
    if f.name == "data":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
            raise CovidXrayError(f"{f.name} must be a path or a list of them, not {value!r}")
        return
    if f.name == "jit_compile":
        ok = isinstance(value, bool | str)
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise CovidXrayError(f"{f.name} must be {kind.__name__}, not {value!r}")


def _range_text(meta) -> str:
    """``at least 1``, ``more than 0``, ``in [0.02, 0.5]``, ``in (0, 1]``."""
    low, high = meta["low"], meta["high"]
    if high is None:
        return f"{'more than' if meta['low_open'] else 'at least'} {low:g}"
    return f"in {'(' if meta['low_open'] else '['}{low:g}, {high:g}{')' if meta['high_open'] else ']'}"


def _one_or_list(data):
    data = data if isinstance(data, str) else [str(d) for d in data]
    return data[0] if isinstance(data, list) and len(data) == 1 else data


def _resolved_paths(data) -> list[str]:
    return [str(Path(d).resolve()) for d in ([data] if isinstance(data, str) else data)]
