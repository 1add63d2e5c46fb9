"""Does an X-ray look like the training data, and is the model sure? The flag that withholds an answer.

After training, :class:`Familiarity` is fitted on the model's features (:func:`feature_model`:
per-channel means and spreads at every resolution of the network) for the training images: their
mean and a shrunk covariance (scikit-learn's Ledoit-Wolf, well conditioned with fewer images than
features). An image's Mahalanobis distance to them says how unlike the training data it is.

An image is flagged, and ``predict`` and the web page give no answer for it, when its distance
exceeds that of all but ``FLAG_SHARE / 2`` of the validation images, or when the probability of
the class the model decides is lower than all but ``FLAG_SHARE / 2`` of theirs: so about
:data:`FLAG_SHARE` of images like the validation data are flagged (the operating point; with a
small validation split, more). Measured on sources held out whole (``docs/evaluation.md``,
``benchmarks/abstention.py``): the distance flags images of an unseen hospital several times as
often as validation images, the probability orders mistakes better; neither catches most of the
mistakes on a source the model never saw. Stored with the run as ``familiarity.npz``; a run
without one flags nothing, and one written before the probability floor flags by distance alone.
Keras models only: the ONNX export has no feature output.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidxray.errors import CovidXrayError
from covidxray.files import atomic_save
from covidxray.inference.decision import doubt
from covidxray.inference.engines import predict_arrays
from covidxray.rundir import FAMILIARITY

#: Share of the validation images the flag fires on: half by distance, half by a low probability.
FLAG_SHARE = 0.10
UNLIKE = ("this X-ray looks unlike the data this model was trained on, or the model is unsure: no answer "
          "(its probabilities may not hold)")
#: The flag in a few words: a heatmap's title, the web page's headline.
UNLIKE_SHORT = "no answer: unlike the training data, or unsure"


@dataclass
class Familiarity:
    """Mean and precision of the training images' features, and the distance above which an image is unlike them."""

    mean: np.ndarray  # (features,)
    precision: np.ndarray  # (features, features)
    threshold: float  # distance above which an image is unlike the training images
    min_probability: float = 0.0  # top probability below which the model is unsure (:func:`~covidxray.inference.decision.doubt`)

    @classmethod
    def fit(cls, train_features: np.ndarray, validation_features: np.ndarray,
            validation_probabilities: np.ndarray | None = None, share: float = FLAG_SHARE) -> Familiarity:
        """Fitted on the training images' features; thresholds from the validation images' (and, with
        their calibrated ``validation_probabilities``, a probability floor), so that ``share`` of the
        validation images are flagged: half by each rule, or all by distance without probabilities."""
        from sklearn.covariance import LedoitWolf

        estimate = LedoitWolf().fit(np.asarray(train_features, dtype=np.float64))
        fitted = cls(estimate.location_, estimate.precision_, np.inf)
        by_distance = share if validation_probabilities is None else share / 2
        fitted.threshold = float(np.quantile(fitted.distances(validation_features), 1 - by_distance))
        if validation_probabilities is not None:
            fitted.min_probability = float(np.quantile(1 - doubt(validation_probabilities), share / 2))
        return fitted

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` to the training images'."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision, centred), 0.0))

    def unlike(self, features: np.ndarray, probabilities: np.ndarray | None = None) -> np.ndarray:
        """True for each image farther from the training data than :attr:`threshold`, or (given the
        calibrated ``probabilities``) whose top class is less probable than :attr:`min_probability`."""
        flags = self.distances(features) > self.threshold
        if probabilities is not None:
            flags |= 1 - doubt(probabilities) < self.min_probability
        return flags

    def save(self, folder: str | Path) -> None:
        atomic_save(Path(folder) / FAMILIARITY, lambda tmp: np.savez(
            tmp, mean=self.mean, precision=self.precision, threshold=self.threshold, min_probability=self.min_probability))

    @classmethod
    def load(cls, folder: str | Path) -> Familiarity | None:
        """The run's familiarity, or None for a run without one; a damaged file is an error naming it."""
        path = Path(folder) / FAMILIARITY
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                mean, precision, threshold = stored["mean"], stored["precision"], stored["threshold"]
                floor = stored["min_probability"] if "min_probability" in stored else np.float64(0.0)  # older runs
            if mean.ndim != 1 or precision.shape != (len(mean), len(mean)):
                raise ValueError(f"shapes {mean.shape} and {precision.shape} do not fit")
            if threshold.shape != () or threshold.dtype.kind not in "iuf" or not np.isfinite(threshold):
                raise ValueError(f"the threshold is {threshold!r}, not one finite number")
            if floor.shape != () or floor.dtype.kind != "f" or not 0 <= floor <= 1:
                raise ValueError(f"the probability floor is {floor!r}, not one number from 0 to 1")
            threshold = float(threshold)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise CovidXrayError(f"{path}: unreadable ({' '.join(str(error).split())}); delete it (the run then flags "
                                 "no image as unlike its training data) or retrain the run") from None
        return cls(mean, precision, threshold, float(floor))


def feature_model(model):
    """A Keras model from ``model``'s input to its features: for each spatial resolution of the
    network, the mean and standard deviation over the image of every channel of the last layer at
    that resolution (early layers see contrast, noise and texture, late ones what the classifier
    reads). Measured on compactnet (``docs/evaluation.md``): more of other sources' images exceed
    the threshold than with the classifier's own input alone.
    """
    import keras

    last_at = {}
    for layer in model.layers:
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if shape and len(shape) == 4 and shape[1] is not None and shape[1] > 1:
            last_at[tuple(shape[1:3])] = layer  # later layers overwrite earlier ones of the same size
    if not last_at:
        raise CovidXrayError(f"model {model.name!r} has no spatial layer to take features from")
    parts = []
    for layer in last_at.values():
        values = keras.ops.cast(layer.output, "float32")
        parts += [keras.ops.mean(values, axis=(1, 2)), keras.ops.std(values, axis=(1, 2))]
    return keras.Model(model.inputs, keras.ops.concatenate(parts, axis=-1))


def model_features(model, images: np.ndarray, *, features=None) -> np.ndarray:
    """The features (:func:`feature_model`) of model inputs ``(n, size, size, 1)`` in [0, 255], flattened.

    ``features``: ``model``'s feature model, built once by a caller that asks many times (each new
    Keras model is traced again on its first call)."""
    values = predict_arrays(feature_model(model) if features is None else features, images)
    return values.reshape(len(values), -1)


def fit_familiarity(model, train_images: np.ndarray, validation_images: np.ndarray,
                    validation_probabilities: np.ndarray | None = None) -> Familiarity:
    """:meth:`Familiarity.fit` on ``model``'s features of the training and validation images (and the
    validation images' calibrated probabilities)."""
    features = feature_model(model)
    return Familiarity.fit(model_features(model, train_images, features=features),
                           model_features(model, validation_images, features=features), validation_probabilities)


def familiarity_summary(unlike: np.ndarray, correct: np.ndarray | None = None) -> dict:
    """How many images are flagged, and the accuracy with and without them (``correct``: per image)."""
    unlike = np.asarray(unlike, dtype=bool)
    summary = {"images": int(len(unlike)), "unlike": int(unlike.sum()),
               "share_unlike": float(unlike.mean()) if len(unlike) else None}
    if correct is not None:
        correct = np.asarray(correct, dtype=bool)
        summary["accuracy_all"] = float(correct.mean()) if len(correct) else None
        summary["accuracy_unflagged"] = float(correct[~unlike].mean()) if (~unlike).any() else None
        summary["accuracy_unlike"] = float(correct[unlike].mean()) if unlike.any() else None
    return summary
