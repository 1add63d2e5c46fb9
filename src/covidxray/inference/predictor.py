"""A trained model ready to answer: :func:`load_predictor` reads a run or a preset once.

The :class:`Predictor` holds the model in its engine (:mod:`covidxray.inference.engines`: Keras,
or the ONNX export run by ONNX Runtime), the class names and input size it was trained with, and its decision rule, so every caller
(predict, evaluate, serve, the notebook) decides the same way::

    predictor = load_predictor("runs/darkcovidnet-three-class")   # or "preset:NAME", or None
    results, failures = predictor.predict_files(["xray.png"])
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidxray import rundir
from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.inference.decision import Calibration
from covidxray.inference.engines import FEATURES, Engine, augmentation_copy, check_tta, engine_class
from covidxray.inference.familiarity import Familiarity, feature_model, model_features
from covidxray.inference.preprocess import ModelInputs, Preprocessing

log = logging.getLogger(__name__)


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
        """The side images are decoded at for :meth:`prepare` (twice the model's with ``--lungs crop``)."""
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

    def unlike_training(self, images, probabilities: np.ndarray | None = None) -> np.ndarray | None:
        """True for each model input that looks unlike the run's training data, or (given its
        calibrated ``probabilities``, from :meth:`predict`) on which the model is unsure: the flag that
        withholds an answer (:mod:`covidxray.inference.familiarity`). None where the run cannot tell
        (no familiarity.npz, or the ONNX engine)."""
        if self.familiarity is None or not self.engine.can(FEATURES):
            return None
        return self.familiarity.unlike(model_features(self.model, images, features=self.feature_model), probabilities)

    @functools.cached_property
    def feature_model(self):
        """The model's feature model (:func:`~covidxray.inference.familiarity.feature_model`), built once:
        every batch the web page analyses asks for it."""
        return feature_model(self.model)

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        """``(calibrated probabilities, decided class indices)`` for model inputs (:meth:`prepare`)."""
        return self.calibration.predict(self.predict_raw(images), self.classes)

    def seen(self, table, *, cache_dir=None, beside=(), near: bool = True) -> np.ndarray:
        """True for each image of ``table`` the model trained or validated on: :func:`seen_by_run`."""
        return seen_by_run(self.path, table, cache_dir=cache_dir, beside=beside, near=near)

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


def seen_by_run(run_dir: str | Path, table, *, cache_dir=None, beside=(), near: bool = True) -> np.ndarray:
    """True for rows of ``table`` (``path``, ``original_name``, ``pixels``) that are the same image as a
    training or validation image of the run: the same original file name, the same pixels, or a
    near-duplicate (:func:`covidxray.data.duplicates.same_images`; for the run's images still on this
    machine; ``near=False``: exact copies only, nothing decoded). ``beside``: dataset paths; a
    relative path of the run's ``split.csv`` (a shipped preset's: ``darkcovidnet/covid/x.png``) is
    also looked for in the folders that hold them."""
    from covidxray.data.duplicates import same_images
    from covidxray.data.sources import as_paths, dataset_root

    run = rundir.RunDir(run_dir)
    if not run.file(rundir.SPLIT).is_file():
        return np.zeros(len(table), dtype=bool)
    try:
        split = run.read_split(columns=("split",))
    except CovidXrayError as error:
        raise CovidXrayError(f"{error}, or pass --include-seen to keep every image") from None
    used = split[split["split"].isin(("train", "validation"))]
    folders = {dataset_root(d).parent for d in as_paths(beside)}
    if "path" in used:
        used = used.assign(path=[_located(p, folders) for p in used["path"]])
    seen, found = same_images(table, used, cache_dir, near=near)
    if found["missing"]:
        log.info("%d of the run's %d training and validation images are not on this machine: their "
                 "near-duplicates cannot be found (same names and pixels still are)", found["missing"], len(used))
    if found["near"]:
        log.info("%d images are near-duplicates of the run's training or validation images", found["near"])
    return seen


def _located(path: str, folders) -> str:
    """``path`` as it is, or, where it is relative and missing here, under the first of ``folders`` that holds it."""
    if Path(path).is_absolute() or Path(path).exists():
        return path
    return next((str(folder / path) for folder in sorted(folders) if (folder / path).exists()), path)
