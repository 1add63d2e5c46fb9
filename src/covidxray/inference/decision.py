"""The decision rule of a run: temperature scaling, then the class it calls.

A run stores its rule in ``calibration.json``, fitted on validation data
(:mod:`covidxray.evaluation.calibration`). Every command that turns model outputs into
answers (predict, evaluate, serve, the report, cross-validation) applies it through
:class:`Calibration`, so they all give the same answer for the same image.

* Temperature scaling (Guo et al., 2017): the model's log-probabilities are divided by T before
  the softmax. T > 1 softens over-confident predictions; the top class never changes.
* A COVID threshold (optional): an image is called COVID when its calibrated COVID probability
  reaches it, else the likeliest other class.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.special import softmax

from covidxray.errors import CovidXrayError
from covidxray.labels import covid_index
from covidxray.rundir import CALIBRATION

EPSILON = 1e-7


def doubt(probabilities: np.ndarray) -> np.ndarray:
    """How unsure the model is of each image: one less its top calibrated probability, whichever
    class the rule calls (a COVID threshold calls COVID below the top on purpose). The one measure
    of doubt: the flag's probability floor and the risk-coverage curve both order images by it."""
    return 1 - np.max(np.asarray(probabilities), axis=1)


@dataclass(frozen=True)
class Calibration:
    """What a run applies to its model's probabilities before deciding."""

    temperature: float = 1.0
    covid_threshold: float | None = None  # None: the class with the highest probability wins
    target_sensitivity: float | None = None  # what the threshold was chosen for

    def __post_init__(self):
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float) \
                or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"the temperature must be a finite number above 0, not {self.temperature!r}")
        for name in ("covid_threshold", "target_sensitivity"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1] or null, not {value!r}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from the model's raw ones."""
        return scale(raw, self.temperature)

    def decide(self, probabilities: np.ndarray, classes) -> np.ndarray:
        """Predicted class index per row of calibrated ``probabilities``."""
        return decide(probabilities, covid_index(classes), self.covid_threshold)

    def predict(self, raw: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
        """``(calibrated probabilities, decided classes)`` of the model's raw probabilities."""
        probabilities = self.apply(raw)
        return probabilities, self.decide(probabilities, classes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values, where: str = "calibration") -> Calibration:
        """The rule stored in a run; a clear error for anything but a valid one."""
        try:
            if not isinstance(values, dict):
                raise ValueError("a JSON object is expected")
            return cls(temperature=values.get("temperature", 1.0), covid_threshold=values.get("covid_threshold"),
                       target_sensitivity=values.get("target_sensitivity"))
        except (ValueError, TypeError) as error:
            raise CovidXrayError(f"{where}: not a valid covidxray calibration ({error}); retrain the run "
                                 "or delete the file") from None

    @classmethod
    def load(cls, folder: str | Path) -> Calibration:
        """The calibration of the run in ``folder``; a run without one decides by the top class."""
        path = Path(folder) / CALIBRATION
        if not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text(), parse_constant=_refuse_constant)
        except ValueError as error:
            raise CovidXrayError(f"{path}: not a valid covidxray calibration ({error}); retrain the run "
                                 "or delete the file") from None
        return cls.from_dict(values, str(path))

    def save(self, folder: str | Path) -> Path:
        from covidxray.files import atomic_write_text

        path = Path(folder) / CALIBRATION
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number")


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by ``temperature``."""
    if temperature == 1.0:
        return np.asarray(probabilities, dtype=np.float64)
    logits = np.log(np.clip(probabilities, EPSILON, 1.0))
    return softmax(logits / temperature, axis=1)


def decide(probabilities: np.ndarray, covid: int | None, threshold: float | None) -> np.ndarray:
    """Predicted class per row: COVID when its probability reaches ``threshold``, else the likeliest other class."""
    if threshold is None or covid is None:
        return probabilities.argmax(axis=1)
    others = probabilities.copy()
    others[:, covid] = -np.inf
    return np.where(probabilities[:, covid] >= threshold, covid, others.argmax(axis=1))
