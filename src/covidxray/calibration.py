"""Calibration and decision threshold, both fitted on validation data.

* Temperature scaling (Guo et al., 2017): one number T divides the model's log-probabilities
  before the softmax. T > 1 softens over-confident predictions; the predicted class never
  changes. T is fitted by minimising the validation cross-entropy.
* Expected calibration error (ECE): the gap between confidence and accuracy, averaged over
  equal-width confidence bins and weighted by the images in each bin.
* A COVID decision threshold chosen for a target sensitivity: an image is called COVID when
  its (calibrated) COVID probability reaches the threshold, else the likeliest other class.

A run stores these in ``calibration.json``; ``evaluate`` and ``predict`` apply them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from covidxray.errors import CovidXrayError

ECE_BINS = 15
EPSILON = 1e-7


@dataclass(frozen=True)
class Calibration:
    """What a run applies to its model's probabilities before deciding."""

    temperature: float = 1.0
    covid_threshold: float | None = None  # None: the class with the highest probability wins
    target_sensitivity: float | None = None  # what the threshold was chosen for

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Calibration:
        return cls(**{k: values.get(k) for k in ("covid_threshold", "target_sensitivity")},
                   temperature=float(values.get("temperature", 1.0)))


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by ``temperature``."""
    if temperature == 1.0:
        return np.asarray(probabilities, dtype=np.float64)
    logits = np.log(np.clip(probabilities, EPSILON, 1.0))
    return softmax(logits / temperature, axis=1)


def fit_temperature(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature that minimises the cross-entropy of ``probabilities`` (searched in [0.05, 20])."""
    if len(y_true) == 0:
        raise CovidXrayError("temperature scaling needs validation images; none were given")
    logits = np.log(np.clip(probabilities, EPSILON, 1.0))
    rows = np.arange(len(y_true))

    def loss(log_t: float) -> float:
        return float(-np.mean(log_softmax(logits / np.exp(log_t), axis=1)[rows, y_true]))

    result = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence, ``bins`` equal-width bins."""
    table = reliability_bins(y_true, probabilities, bins)
    return float(sum(count * abs(accuracy - confidence) for confidence, accuracy, count
                     in zip(table["confidence"], table["accuracy"], table["count"])) / len(y_true))


def reliability_bins(y_true: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per confidence bin: mean confidence, accuracy and image count (for the reliability diagram)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = [(float(confidence[which == b].mean()), float(correct[which == b].mean()), int((which == b).sum()))
            for b in range(bins) if (which == b).any()]
    return {"confidence": [r[0] for r in rows], "accuracy": [r[1] for r in rows], "count": [r[2] for r in rows]}


def choose_threshold(y_true: np.ndarray, covid_probability: np.ndarray, covid: int, target: float) -> float:
    """The highest COVID threshold whose sensitivity on these images reaches ``target``.

    Ties are resolved towards catching more COVID: the threshold is the k-th highest COVID
    probability among COVID images, k = ceil(target x COVID images).
    """
    if not 0.0 < target <= 1.0:
        raise CovidXrayError(f"--target-sensitivity must lie in (0, 1]; got {target}")
    positives = np.sort(covid_probability[y_true == covid])[::-1]
    if len(positives) == 0:
        raise CovidXrayError("choosing a COVID threshold needs COVID images in the validation split")
    needed = int(np.ceil(target * len(positives) - 1e-9))
    return float(positives[max(needed, 1) - 1])


def decide(probabilities: np.ndarray, covid: int | None, threshold: float | None) -> np.ndarray:
    """Predicted class per row: COVID when its probability reaches ``threshold``, else the likeliest other class."""
    if threshold is None or covid is None:
        return probabilities.argmax(axis=1)
    others = probabilities.copy()
    others[:, covid] = -np.inf
    return np.where(probabilities[:, covid] >= threshold, covid, others.argmax(axis=1))
