"""A trained model ready to answer: :func:`load_predictor` reads a run or a preset once.

The :class:`Predictor` holds the model in its engine (:mod:`covidxray.inference.engines`: Keras,
or the ONNX export run by ONNX Runtime), the class names and input size it was trained with, and its decision rule, so every caller
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
from covidxray.inference.decision import Calibration
from covidxray.inference.engines import FEATURES, Engine, augmentation_copy, check_tta, engine_class
from covidxray.inference.familiarity import Familiarity, feature_model, model_features
from covidxray.inference.preprocess import ModelInputs, Preprocessing


@dataclass
class Predictor:
    """A loaded model with its classes, input size and decision rule."""

    engine: Engine  # the model, and what it can do beside probabilities
    config: TrainConfig
    calibration: Calibration
    path: Path  # the run (or preset) folder it was loaded from
    preprocessing: Preprocessing | None = None  # default: the run's own (config.json)
    familiarity: Familiarity | None = None  # the run's familiarity.npz (Keras engine), or None: nothing flagged
    tta: int = 1  # views averaged per image: itself and tta - 1 draws of the training augmentation

    def __post_init__(self):
        if self.preprocessing is None:
            self.preprocessing = Preprocessing.from_config(self.config)
        check_tta(self.tta, self.engine.name)
        if self.tta > 1:
            augmentation_copy(self.model, self.config.seed)  # a model trained with --no-augment fails here, not later

    @property
    def model(self):
        """The engine's model: a ``keras.Model``, or an ONNX Runtime session with the same ``predict``."""
        return self.engine.model

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
        (:func:`~covidxray.inference.engines.predict_augmented`, seeded with the run's seed)."""
        return self.engine.predict(images, self.tta, seed=self.config.seed)

    def unlike_training(self, images) -> np.ndarray | None:
        """True for each model input that looks unlike the run's training data
        (:mod:`covidxray.inference.familiarity`); None where the run cannot tell (no familiarity.npz,
        or the ONNX engine)."""
        if self.familiarity is None or not self.engine.can(FEATURES):
            return None
        return self.familiarity.unlike(model_features(self.model, images, features=self.feature_model))

    @functools.cached_property
    def feature_model(self):
        """The model's feature model (:func:`~covidxray.inference.familiarity.feature_model`), built once:
        every batch the web page analyses asks for it."""
        return feature_model(self.model)

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        """``(calibrated probabilities, decided class indices)`` for model inputs (:meth:`prepare`)."""
        return self.calibration.predict(self.predict_raw(images), self.classes)

    def predict_files(self, paths, *, heatmaps=None):
        """Predict image files: see :func:`covidxray.inference.predict.predict_files`."""
        from covidxray.inference.predict import predict_files

        return predict_files(self, paths, heatmaps=heatmaps)


def load_predictor(run: str | Path | None = None, *, preset: str | None = None, engine: str = "keras",
                   tta: int = 1) -> Predictor:
    """The model of a run folder, of ``preset:NAME`` (or ``preset=NAME``), or of the default preset.

    ``engine``: ``"keras"`` loads ``model.keras``; ``"onnxruntime"`` the run's ONNX export
    (``covidxray export``). Class names, input size and decision rule come from the run's files,
    which are checked against the model. ``tta``: views averaged per image (test-time
    augmentation, Keras engine; 1: none).
    """
    from covidxray.presets import resolve_run

    kind = engine_class(engine)
    check_tta(tta, engine)  # before the model loads
    run = rundir.RunDir(resolve_run(run, preset))
    config = run.load_config()
    calibration = Calibration.load(run.path)
    familiarity = Familiarity.load(run.path) if kind.can(FEATURES) else None
    return Predictor(kind.load(run, config), config, calibration, run.path, familiarity=familiarity, tta=tta)
