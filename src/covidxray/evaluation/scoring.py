"""Scored predictions: what a model said about a labelled set, decided by the run's rule, and its metrics.

:class:`ScoredPredictions` is what the report, cross-validation and ``evaluate`` read: the true
classes, the calibrated probabilities, the decided classes and the images' table (patients for
the intervals, sources for the breakdown), aligned row for row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from covidxray.data.splits import split_groups
from covidxray.errors import DatasetError
from covidxray.evaluation.metrics import classification_metrics, risk_coverage
from covidxray.inference.decision import Calibration, doubt


@dataclass
class ScoredPredictions:
    """Predictions for a labelled set, row ``i`` of every field about image ``i``."""

    targets: np.ndarray  # (n,) true class indices
    probabilities: np.ndarray  # (n, classes) calibrated
    predicted: np.ndarray  # (n,) decided class indices
    table: pd.DataFrame  # the images' rows: patient_id and source at least
    classes: tuple[str, ...]

    @classmethod
    def from_raw(cls, targets, raw: np.ndarray, table: pd.DataFrame, classes, calibration: Calibration
                 ) -> ScoredPredictions:
        """Raw model probabilities, calibrated and decided by ``calibration``."""
        probabilities, predicted = calibration.predict(raw, classes)
        return cls(np.asarray(targets), probabilities, predicted, table.reset_index(drop=True), tuple(classes))

    def __len__(self) -> int:
        return len(self.targets)

    def metrics(self, *, by_source: bool = True, seed: int = 0) -> dict:
        """All metrics, with 95% intervals over the patients and, with ``by_source`` and two or more
        sources, a breakdown per source."""
        groups = split_groups(self.table)
        metrics = classification_metrics(self.targets, self.probabilities, self.classes, predictions=self.predicted,
                                         groups=groups, seed=seed)
        metrics["risk_coverage"] = risk_coverage(self.predicted == self.targets, self.doubt())
        sources = self.sources()
        if by_source and len(np.unique(sources)) > 1:
            metrics["per_source"] = {
                str(source): classification_metrics(
                    self.targets[sources == source], self.probabilities[sources == source], self.classes,
                    predictions=self.predicted[sources == source], groups=groups[sources == source], seed=seed)
                for source in np.unique(sources)
            }
        return metrics

    def doubt(self) -> np.ndarray:
        """How doubtful each answer is (:func:`~covidxray.inference.decision.doubt`, as the flag's
        floor): the order in which images are left unanswered in the risk-coverage curve; measured
        against other doubts in ``docs/evaluation.md``."""
        return doubt(self.probabilities)

    def per_image(self) -> pd.DataFrame:
        """One row per image: ``path``, ``label`` (true), ``predicted``, ``source`` and one column of
        calibrated probability per class, named after the class."""
        names = np.asarray(self.classes, dtype=object)
        frame = pd.DataFrame({"path": self.table["path"].astype(str).to_numpy() if "path" in self.table else "",
                              "label": names[self.targets], "predicted": names[self.predicted],
                              "source": self.sources()})
        for i, name in enumerate(self.classes):
            frame[name] = np.round(self.probabilities[:, i], 6)
        return frame

    def sources(self) -> np.ndarray:
        return self.table["source"].fillna("").astype(str).to_numpy()


def per_source_required(table: pd.DataFrame, where: str) -> None:
    """Raise unless the table's ``source`` column holds two or more values."""
    sources = table["source"].fillna("").astype(str).unique()
    if len(sources) < 2:
        raise DatasetError(
            f"{where}: the source column has one value ({sources[0] or 'empty'!r}); a per-source breakdown "
            "needs images from two or more sources (add a source column to the manifest, or drop --per-source)"
        )
