"""Fitting a run's decision rule on validation data, and measuring calibration.

* The temperature T (:class:`~covidxray.inference.decision.Calibration`) minimises the
  validation cross-entropy (NLL), and is kept only where it lowers that NLL by at least
  :data:`KEEP_TEMPERATURE_MARGIN` (:class:`TemperatureChoice`, the one place that decides);
  otherwise the run keeps the model's own probabilities (T = 1).
* A COVID decision threshold chosen for a target sensitivity: the highest threshold that
  still catches that share of the validation COVID images.
* Expected calibration error (ECE): the gap between confidence and accuracy, averaged over
  equal-width confidence bins and weighted by the images in each bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from covidxray.errors import CovidXrayError, DatasetError
from covidxray.evaluation.metrics import cross_entropy
from covidxray.inference.decision import EPSILON, Calibration, scale
from covidxray.labels import covid_index

ECE_BINS = 15
#: Temperature scaling is kept only where it lowers the validation NLL by at least this share of it
#: (1% relative): a temperature fitted on a small validation split that barely moves its loss is as
#: likely to make the test split's calibration worse as better (issue 31: test ECE 5.4% -> 9.2%).
KEEP_TEMPERATURE_MARGIN = 0.01


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


@dataclass(frozen=True)
class TemperatureChoice:
    """The temperature fitted on validation data, and whether the run keeps it."""

    fitted: float  # the temperature that minimises the validation NLL
    loss_before: float  # validation NLL of the model's own probabilities (T = 1)
    loss_after: float  # validation NLL with the fitted temperature
    margin: float = KEEP_TEMPERATURE_MARGIN

    @property
    def kept(self) -> bool:
        """The rule: kept where it lowers the validation NLL by at least ``margin`` of it."""
        return self.loss_after <= (1.0 - self.margin) * self.loss_before

    @property
    def temperature(self) -> float:
        """The temperature the run applies: the fitted one where kept, else 1 (the model's own probabilities)."""
        return self.fitted if self.kept else 1.0

    def to_dict(self) -> dict:
        """What ``metrics.json``'s ``calibration`` records of the choice (beside the kept rule's own entries)."""
        return {"fitted_temperature": self.fitted, "temperature_kept": self.kept, "keep_margin": self.margin}


def choose_temperature(y_val: np.ndarray, raw_val: np.ndarray, margin: float = KEEP_TEMPERATURE_MARGIN
                       ) -> TemperatureChoice:
    """Fit the temperature on validation data (:func:`fit_temperature`) and measure what it does to their NLL."""
    fitted = fit_temperature(y_val, raw_val)
    return TemperatureChoice(fitted, cross_entropy(y_val, raw_val), cross_entropy(y_val, scale(raw_val, fitted)), margin)


def fit_calibration(y_val: np.ndarray, raw_val: np.ndarray, classes, target_sensitivity: float | None,
                    choice: TemperatureChoice | None = None) -> Calibration:
    """The decision rule fitted on validation data: the temperature where :class:`TemperatureChoice`
    keeps it (``choice``, default :func:`choose_temperature`), and, for a target sensitivity, the COVID
    threshold on the probabilities so scaled."""
    temperature = (choice or choose_temperature(y_val, raw_val)).temperature
    threshold = None
    if target_sensitivity is not None:
        covid = covid_index(classes)
        if covid is None:
            raise DatasetError("--target-sensitivity sets the COVID threshold; this task has no covid class")
        threshold = choose_threshold(y_val, scale(raw_val, temperature)[:, covid], covid, target_sensitivity)
    return Calibration(temperature, threshold, target_sensitivity)


def calibration_summary(y: np.ndarray, raw: np.ndarray, calibration: Calibration) -> dict:
    """Expected calibration error and loss before (the model's own probabilities) and after
    ``calibration``'s temperature scaling."""
    calibrated = calibration.apply(raw)
    return {"ece_before": expected_calibration_error(y, raw), "ece_after": expected_calibration_error(y, calibrated),
            "loss_before": cross_entropy(y, raw), "loss_after": cross_entropy(y, calibrated),
            "bins_before": reliability_bins(y, raw), "bins_after": reliability_bins(y, calibrated)}


def run_calibration(y: dict, raw: dict, classes, target_sensitivity: float | None) -> tuple[Calibration, dict]:
    """A run's decision rule and ``metrics.json``'s ``calibration`` entry from its splits' labels and raw
    probabilities (``y``, ``raw``: split -> array; a run without a ``validation`` split keeps T = 1).

    The entry holds the rule (:meth:`Calibration.to_dict`: the temperature kept), the fitted temperature
    and whether it was kept (:meth:`TemperatureChoice.to_dict`), and per split but training, the ECE and
    loss of the model's own probabilities ("before") and of the fitted temperature's ("after"), whichever
    the run keeps."""
    if "validation" not in y:
        calibration = Calibration()
        return calibration, {**calibration.to_dict(), **{split: calibration_summary(y[split], raw[split], calibration)
                                                          for split in y if split != "train"}}
    choice = choose_temperature(y["validation"], raw["validation"])
    calibration = fit_calibration(y["validation"], raw["validation"], classes, target_sensitivity, choice)
    scaled = Calibration(choice.fitted)
    return calibration, {**calibration.to_dict(), **choice.to_dict(),
                         **{split: calibration_summary(y[split], raw[split], scaled) for split in y if split != "train"}}
