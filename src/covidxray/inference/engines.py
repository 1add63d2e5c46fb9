"""Inference engines: the model behind a :class:`~covidxray.inference.predictor.Predictor`, one interface.

:class:`KerasEngine` runs the run's ``model.keras``: probabilities, test-time augmentation, the
features of the "unlike the training data" flag and the gradients of Grad-CAM heatmaps.
:class:`OnnxEngine` runs its ONNX export (``covidxray export``) with ONNX Runtime: probabilities
only. What an engine cannot do it says once, in :meth:`Engine.require`, before any work::

    engine = engine_class("onnxruntime").load(run, config)   # or engine_class(name).require(GRADIENTS, "--heatmaps")
    probabilities = engine.predict(images)          # (n, classes) for (n, size, size, 1) inputs in [0, 255]

:func:`predict_arrays` is the one batched prediction loop every caller (training included) uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from covidxray import rundir
from covidxray.config import refuse_removed_settings
from covidxray.errors import CovidXrayError

PREDICT_BATCH = 64
#: The most test-time augmentation views (``--tta``): each view is one more pass of the model over
#: every image (1000 views of one image took 56 s), and past a few tens the average no longer moves.
MAX_TTA = 32
#: Images converted to float32 at a time: bounds memory for large (or shard-backed) arrays.
PREDICT_CHUNK = 4096
#: Key of the ONNX metadata entry (and name of the JSON file in a SavedModel) holding classes and size.
METADATA_KEY = "covidxray"
ONNX_EXTRA = "pip install 'covidxray[onnx]'"
#: What an engine may be able to do beyond probabilities, and why only the Keras model can.
TTA, FEATURES, GRADIENTS = "tta", "features", "gradients"
NEEDS = {TTA: "it draws from the model's augmentation layer", FEATURES: "it reads the model's inner layers",
         GRADIENTS: "Grad-CAM takes gradients"}


def predict_arrays(model, images: np.ndarray, batch_size: int = PREDICT_BATCH, *, pad: bool = True) -> np.ndarray:
    """Class probabilities ``(n, classes)`` for ``(n, size, size, 1)`` images in [0, 255].

    ``images`` may be any array-like with slicing and ``astype`` (a shard array is read
    chunk by chunk). Each batch goes through the model's one compiled predict function
    (``predict_on_batch``): ``model.predict`` builds a data pipeline per call, which cost a
    single image about 50 ms on a CPU (docs/speed.md). Where the images fill more than one
    batch, the last, smaller one is padded to ``batch_size`` (:func:`padded_batches`), so that
    the model sees one batch shape: a second shape is traced again by TensorFlow (0.36 s for the
    shipped model on a 2-core CPU; five such traces in a row print TensorFlow's "triggered
    tf.function retracing" warning) and compiled again by JAX. ``pad=False`` for a caller that
    predicts the same images with the same model again and again (the validation images after each
    epoch): the second shape is traced once, the padding would be computed every time. Under a
    data-parallel distribution ``model.predict`` spreads the batches, each padded to split evenly
    over the devices; the padding's outputs are dropped.
    """
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    import keras

    devices = device_count(keras.distribution.distribution())
    batch_size = -(-batch_size // devices) * devices
    parts = []
    for start in range(0, len(images), PREDICT_CHUNK):
        chunk = images[start:start + PREDICT_CHUNK].astype(np.float32)
        if devices == 1:
            parts += [np.asarray(model.predict_on_batch(batch))[:count]
                      for batch, count in padded_batches(chunk, batch_size, pad=pad and len(images) > batch_size)]
            continue
        count, pad = len(chunk), -len(chunk) % devices
        if pad:
            chunk = np.pad(chunk, [(0, pad)] + [(0, 0)] * (chunk.ndim - 1))
        parts.append(np.asarray(model.predict(chunk, batch_size=batch_size, verbose=0))[:count])
    return np.concatenate(parts)


def padded_batches(images: np.ndarray, batch_size: int, *, pad: bool = True, multiple: int | None = None):
    """``(batch, count)`` for each run of ``batch_size`` rows of ``images``: ``count`` rows of the
    images, and, where ``pad``, the last, smaller batch filled with zeros up to ``batch_size`` rows
    (up to a multiple of ``multiple``, when given). The caller keeps the first ``count`` outputs:
    every row is computed on its own in inference, so the padding changes no other row's result."""
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        count = len(batch)
        size = batch_size if multiple is None else -(-count // multiple) * multiple
        if pad and count < size:
            batch = np.concatenate([batch, np.zeros((size - count, *batch.shape[1:]), batch.dtype)])
        yield batch, count


def predict_augmented(model, images: np.ndarray, views: int, *, seed: int = 0,
                      batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Test-time augmentation: class probabilities ``(n, classes)`` averaged over each image as it
    is and ``views - 1`` draws of the model's own training augmentation (its ``augmentation``
    layer, applied as in training; rotation, zoom, shift and contrast by default).

    The draws come from a copy of that layer seeded with ``seed``, so the same call gives the same
    probabilities and the model's own layer is left as it was. ``views=1`` is :func:`predict_arrays`.
    """
    check_tta(views)
    probabilities = predict_arrays(model, images, batch_size)
    if views == 1 or len(images) == 0:
        return probabilities
    augment = augmentation_copy(model, seed)
    total = probabilities.astype(np.float64)
    for _ in range(views - 1):
        for start in range(0, len(images), PREDICT_CHUNK):
            chunk = images[start:start + PREDICT_CHUNK].astype(np.float32)
            drawn = np.concatenate([np.asarray(augment(chunk[i:i + batch_size], training=True), dtype=np.float32)
                                    for i in range(0, len(chunk), batch_size)])
            total[start:start + len(chunk)] += predict_arrays(model, drawn, batch_size)
    return (total / views).astype(np.float32)


def check_tta(views, engine: str = "keras") -> None:
    """Raise unless ``views`` (``--tta``) is a whole number from 1 to :data:`MAX_TTA`, and 1 for an
    engine that cannot draw views (:meth:`Engine.require`); before any work."""
    if isinstance(views, bool) or not isinstance(views, int | np.integer) or not 1 <= views <= MAX_TTA:
        raise CovidXrayError(f"--tta must be a whole number of views from 1 (none) to {MAX_TTA}; got {views!r}")
    if views > 1:
        engine_class(engine).require(TTA, "--tta")


def augmentation_copy(model, seed: int):
    """A fresh copy of ``model``'s ``augmentation`` layer whose random layers draw from ``seed``."""
    import keras

    try:
        layer = model.get_layer("augmentation")
    except ValueError:
        raise CovidXrayError(f"model {model.name!r} has no augmentation layer (trained with --no-augment, or an "
                             "ensemble): "
                             "test-time augmentation draws from it; use --tta 1") from None
    config = layer.get_config()
    for i, inner in enumerate(config["layers"]):
        if "seed" in inner["config"]:
            inner["config"]["seed"] = seed + i
    return keras.Sequential.from_config(config)


def device_count(distribution) -> int:
    """The number of devices a ``keras.distribution`` spreads over (1 for None)."""
    return 1 if distribution is None else int(distribution.device_mesh.devices.size)


class Engine:
    """A model that gives class probabilities, and says what else it can do (:data:`NEEDS`)."""

    name: ClassVar[str]
    abilities: ClassVar[frozenset[str]] = frozenset()
    model: object  # what predict_arrays takes: predict_on_batch and output_shape

    @classmethod
    def can(cls, ability: str) -> bool:
        return ability in cls.abilities

    @classmethod
    def require(cls, ability: str, option: str) -> None:
        """Refuse ``option`` (what the user asked for, as they asked) when this engine lacks ``ability``."""
        if ability not in cls.abilities:
            raise CovidXrayError(f"{option} needs the Keras model ({NEEDS[ability]}); drop --engine {cls.name}"
                                 + (" or use --tta 1" if ability == TTA else ""))

    def predict(self, images, views: int = 1, seed: int = 0) -> np.ndarray:
        """The model's probabilities ``(n, classes)``; ``views`` > 1 averages test-time augmentation views."""
        raise NotImplementedError


class KerasEngine(Engine):
    """The run's ``model.keras``."""

    name = "keras"
    abilities = frozenset(NEEDS)

    def __init__(self, model):
        self.model = model

    def predict(self, images, views: int = 1, seed: int = 0) -> np.ndarray:
        return predict_augmented(self.model, images, views, seed=seed)

    @classmethod
    def load(cls, run: rundir.RunDir, config) -> KerasEngine:
        """``model.keras`` of ``run``, checked against its ``config.json`` (classes, input size)."""
        from covidxray.models import load_model

        model = load_model(run.require(rundir.MODEL))
        outputs = model.output_shape[-1]
        if outputs != len(config.classes):
            raise CovidXrayError(f"{run.file(rundir.MODEL)}: the model has {outputs} outputs but "
                                 f"{run.file(rundir.CONFIG)} names {len(config.classes)} classes; retrain the run")
        side = tuple(model.input_shape[1:3])
        if None not in side and side != (config.image_size, config.image_size):
            raise CovidXrayError(f"{run.file(rundir.MODEL)}: the model takes {side[0]}x{side[1]}px images but "
                                 f"{run.file(rundir.CONFIG)} says image_size {config.image_size}; retrain the run")
        return cls(model)


class OnnxEngine(Engine):
    """The run's ONNX export, run by ONNX Runtime: probabilities only."""

    name = "onnxruntime"

    def __init__(self, model: OnnxModel):
        self.model = model

    def predict(self, images, views: int = 1, seed: int = 0) -> np.ndarray:
        check_tta(views, self.name)
        return predict_arrays(self.model, images)

    @classmethod
    def load(cls, run: rundir.RunDir, config) -> OnnxEngine:
        """``model.onnx`` of ``run``, checked against its ``config.json``; a clear error names the
        command that makes it."""
        path = run.file(rundir.ONNX_MODEL)
        if not path.is_file():
            raise CovidXrayError(f"{path}: missing; export the run first with covidxray export --run {run.path} "
                                 "--format onnx")
        model = OnnxModel(path)
        if tuple(model.classes) != tuple(config.classes) or model.image_size != config.image_size:
            raise CovidXrayError(f"{model.path}: exported for classes {model.classes} at {model.image_size}px, but "
                                 f"{run.file(rundir.CONFIG)} says {config.classes} at {config.image_size}px; export again")
        return cls(model)


class OnnxModel:
    """An exported ONNX model run by ONNX Runtime, with the class names and input size it carries.

    ``predict`` and ``predict_on_batch`` have the shape of ``keras.Model``'s, so
    :func:`predict_arrays` can use either.
    """

    def __init__(self, path: str | Path):
        try:
            import onnxruntime
        except ImportError:
            raise CovidXrayError(f"predicting with onnxruntime needs it installed: {ONNX_EXTRA}") from None
        self.path = Path(path)
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            metadata = json.loads(self.session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        except Exception as error:  # onnxruntime raises its own exception types for a bad file
            raise CovidXrayError(f"{self.path}: not an ONNX model exported by covidxray ({error}); "
                                 "export it again with covidxray export") from None
        refuse_removed_settings(metadata.get("preprocessing"), str(self.path))
        self.classes = tuple(metadata["classes"])
        self.image_size = int(metadata["image_size"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_shape = (None, len(self.classes))

    def predict(self, images, batch_size: int = 64, verbose: int = 0) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        parts = [self.session.run(None, {self.input_name: images[i:i + batch_size]})[0]
                 for i in range(0, len(images), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), np.float32)

    def predict_on_batch(self, images) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(images, dtype=np.float32)})[0]


ENGINES: dict[str, type[Engine]] = {engine.name: engine for engine in (KerasEngine, OnnxEngine)}


def engine_class(name: str) -> type[Engine]:
    """The engine called ``name``; an unknown name fails with the known ones."""
    if name not in ENGINES:
        raise CovidXrayError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    return ENGINES[name]

