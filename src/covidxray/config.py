"""Training settings: one dataclass, written beside every run so the run can be repeated."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from covidxray.data.shards import shard_image_size
from covidxray.distribute import check_settings
from covidxray.errors import CovidXrayError
from covidxray.labels import task_classes
from covidxray.models import DEFAULT_MODEL, get_spec

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024
MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")


@dataclass
class TrainConfig:
    data: str | list[str]  # class folders, a CSV manifest or an ieee8023-style folder; a list combines several
    task: str = "three-class"  # "binary" (covid vs normal) or "three-class"
    model: str = DEFAULT_MODEL  # a name from covidxray.models.list_models()
    image_size: int | None = None  # input side in pixels; None: the model's own default
    weights: str = "none"  # none, imagenet (backbones) or a weights file
    epochs: int = 30  # the learning rate decays to zero at the last epoch
    batch_size: int = 32
    learning_rate: float = 1e-3  # Adam's peak rate: one epoch of warm-up, then cosine decay to 0
    patience: int = 10  # stop after this many epochs without better validation accuracy (watched from mid-training)
    class_weights: bool = True  # weight the loss by inverse class frequency
    augment: bool = True  # rotation, zoom, shift, contrast inside the model
    flip: bool = False  # add horizontal flips to the augmentation
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0  # seeds the split, the weights and the augmentation
    group_by: str = "patient"  # "patient": no patient in two splits; "none": image-level (inflates accuracy)
    target_sensitivity: float | None = None  # choose the COVID threshold on validation data for this sensitivity
    blank_lungs: float = 0.0  # shortcut probe: blank this central fraction of each image (0: off)
    jit_compile: bool | str = "auto"  # XLA compilation (Keras's "auto": where the backend supports it)
    mixed_precision: str | None = None  # None, "mixed_float16" or "mixed_bfloat16" (faster on GPUs)
    steps_per_execution: int = 1  # training steps per compiled call (more: less Python per step)
    cache_dir: str | None = None  # decoded-image cache; None: ~/.cache/covidxray
    distribute: str = "none"  # "data-parallel": split each batch over several devices (JAX backend only)
    devices: int | None = None  # devices for data-parallel training; None: every visible device
    classes: tuple[str, ...] = ()  # filled from the task by resolve()

    def resolve(self) -> TrainConfig:
        """Fill the derived fields (classes, image size) and check the settings."""
        spec = get_spec(self.model)
        classes = task_classes(self.task)
        for name in ("val_fraction", "test_fraction"):
            if not 0.02 <= getattr(self, name) <= 0.5:
                raise CovidXrayError(f"--{name.replace('_', '-')} must lie between 0.02 and 0.5")
        if self.epochs < 1 or self.batch_size < 1:
            raise CovidXrayError("--epochs and --batch-size must be at least 1")
        if self.mixed_precision not in (None, *MIXED_PRECISION_POLICIES):
            raise CovidXrayError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION_POLICIES)}, "
                                 f"not {self.mixed_precision!r}")
        if self.steps_per_execution < 1:
            raise CovidXrayError("--steps-per-execution must be at least 1")
        if self.image_size is not None and not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise CovidXrayError(f"--image-size must lie between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels")
        if self.target_sensitivity is not None and not 0.0 < self.target_sensitivity <= 1.0:
            raise CovidXrayError(f"--target-sensitivity must lie in (0, 1]; got {self.target_sensitivity}")
        if not 0.0 <= self.blank_lungs < 1.0:
            raise CovidXrayError(f"--blank-lungs must lie in [0, 1); got {self.blank_lungs}")
        if self.group_by not in ("patient", "none"):
            raise CovidXrayError(f"--group-by must be patient or none; got {self.group_by!r}")
        check_settings(self.distribute, self.devices)
        stored = shard_image_size(self.data)  # a shard folder holds one image size
        if stored is not None and self.image_size not in (None, stored):
            raise CovidXrayError(f"{self.data}: the shards hold {stored}px images; train with --image-size {stored} "
                                 f"or shard again with --image-size {self.image_size}")
        size = stored or (spec.image_size if self.image_size is None else self.image_size)
        data = self.data if isinstance(self.data, str) else [str(d) for d in self.data]
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        return TrainConfig(**{**asdict(self), "classes": classes, "image_size": size, "data": data})

    def save(self, path: Path) -> None:
        from covidxray.files import atomic_write_text

        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        values = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        values["classes"] = tuple(values.get("classes", ()))
        return cls(**values)
