"""A trained model ready to answer: :func:`load_predictor` reads a run or a preset once.

The :class:`Predictor` holds the model (Keras, or its ONNX export run by ONNX Runtime), the
class names and input size it was trained with, and its decision rule, so every caller
(predict, evaluate, serve, the notebook) decides the same way::

    predictor = load_predictor("runs/darkcovidnet-three-class")   # or "preset:NAME", or None
    results, failures = predictor.predict_files(["xray.png"])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidxray import rundir
from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.inference.decision import Calibration
from covidxray.inference.familiarity import Familiarity
from covidxray.inference.preprocess import ModelInputs, Preprocessing

ENGINES = ("keras", "onnxruntime")


@dataclass
class Predictor:
    """A loaded model with its classes, input size and decision rule."""

    model: object  # a keras.Model, or an OnnxModel (same ``predict``)
    config: TrainConfig
    calibration: Calibration
    path: Path  # the run (or preset) folder it was loaded from
    engine: str = "keras"
    preprocessing: Preprocessing | None = None  # default: the run's own (config.json)
    familiarity: Familiarity | None = None  # the run's familiarity.npz (Keras engine), or None: nothing flagged
    tta: int = 1  # views averaged per image: itself and tta - 1 draws of the training augmentation

    def __post_init__(self):
        if self.preprocessing is None:
            self.preprocessing = Preprocessing.from_config(self.config)
        from covidxray.inference.predict import augmentation_copy, check_tta

        check_tta(self.tta, self.engine)
        if self.tta > 1:
            augmentation_copy(self.model, self.config.seed)  # a model trained with --no-augment fails here, not later

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.config.classes)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def decode_side(self) -> int:
        """The side images are decoded at for :meth:`prepare` (twice the model's with ``--lungs crop|mask``)."""
        return self.preprocessing.decode_side

    def prepare(self, images, digests=None, *, lungs: bool = False) -> ModelInputs:
        """The model's inputs for images decoded at :attr:`decode_side`, as the run was trained:
        :meth:`Preprocessing.apply <covidxray.inference.preprocess.Preprocessing.apply>`."""
        return self.preprocessing.apply(images, digests, lungs=lungs)

    def predict_raw(self, images) -> np.ndarray:
        """The model's own probabilities ``(n, classes)`` for ``(n, size, size, 1)`` model inputs in
        [0, 255] (:meth:`prepare` makes them); with :attr:`tta` views, their mean
        (:func:`~covidxray.inference.predict.predict_augmented`, seeded with the run's seed)."""
        from covidxray.inference.predict import predict_augmented

        return predict_augmented(self.model, images, self.tta, seed=self.config.seed)

    def unlike_training(self, images) -> np.ndarray | None:
        """True for each model input that looks unlike the run's training data
        (:mod:`covidxray.inference.familiarity`); None where the run cannot tell (no familiarity.npz,
        or the ONNX engine)."""
        if self.familiarity is None or self.engine != "keras":
            return None
        from covidxray.inference.familiarity import model_features

        return self.familiarity.unlike(model_features(self.model, images, features=self.feature_model))

    @functools.cached_property
    def feature_model(self):
        """The model's feature model (:func:`~covidxray.inference.familiarity.feature_model`), built once:
        every batch the web page analyses asks for it."""
        from covidxray.inference.familiarity import feature_model

        return feature_model(self.model)

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        """``(calibrated probabilities, decided class indices)`` for model inputs (:meth:`prepare`)."""
        return self.calibration.predict(self.predict_raw(images), self.classes)

    def predict_files(self, paths, *, heatmaps=None, progress: bool | None = None):
        """Predict image files: see :func:`covidxray.inference.predict.predict_files`."""
        from covidxray.inference.predict import predict_files

        return predict_files(self, paths, heatmaps=heatmaps, progress=progress)


def load_predictor(run: str | Path | None = None, *, preset: str | None = None, engine: str = "keras",
                   tta: int = 1) -> Predictor:
    """The model of a run folder, of ``preset:NAME`` (or ``preset=NAME``), or of the default preset.

    ``engine``: ``"keras"`` loads ``model.keras``; ``"onnxruntime"`` the run's ONNX export
    (``covidxray export``). Class names, input size and decision rule come from the run's files,
    which are checked against the model. ``tta``: views averaged per image (test-time
    augmentation, Keras engine; 1: none).
    """
    from covidxray.presets import resolve_run

    if engine not in ENGINES:
        raise CovidXrayError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    run = rundir.RunDir(resolve_run(run, preset))
    config = run.load_config()
    calibration = Calibration.load(run.path)
    if engine == "onnxruntime":
        from covidxray.inference.export import load_onnx

        model = load_onnx(run.path)
        if tuple(model.classes) != tuple(config.classes) or model.image_size != config.image_size:
            raise CovidXrayError(f"{model.path}: exported for classes {model.classes} at {model.image_size}px, but "
                                 f"{run.file(rundir.CONFIG)} says {config.classes} at {config.image_size}px; export again")
    else:
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
    familiarity = Familiarity.load(run.path) if engine == "keras" else None
    return Predictor(model, config, calibration, run.path, engine, familiarity=familiarity, tta=tta)
