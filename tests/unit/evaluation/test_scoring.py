"""covidxray.evaluation.scoring: raw outputs decided by the run's rule, and their metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidxray.errors import DatasetError
from covidxray.evaluation.metrics import classification_metrics
from covidxray.evaluation.scoring import ScoredPredictions, per_source_required
from covidxray.inference.decision import Calibration

CLASSES = ("covid", "normal")
TARGETS = np.array([0, 0, 0, 1, 1, 1])
RAW = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
TABLE = pd.DataFrame({"patient_id": ["a", "a", "b", "c", "d", "d"], "source": ["x", "x", "y", "x", "y", "x"]},
                     index=[10, 11, 12, 13, 14, 15])  # an index that is not 0..n-1, as a split's rows


def test_from_raw_applies_the_calibration():
    scored = ScoredPredictions.from_raw(TARGETS, RAW, TABLE, CLASSES, Calibration(temperature=1.0, covid_threshold=0.35))
    assert scored.predicted.tolist() == [0, 0, 1, 1, 0, 1]  # covid at 0.4 is called, 0.3 is not
    np.testing.assert_array_equal(scored.probabilities, RAW)
    assert len(scored) == 6 and scored.classes == CLASSES
    assert list(scored.table.index) == list(range(6))  # aligned row for row with the arrays
    top = ScoredPredictions.from_raw(TARGETS, RAW, TABLE, CLASSES, Calibration())
    assert top.predicted.tolist() == [0, 1, 1, 1, 0, 1]


def test_metrics_use_the_decided_classes_and_break_down_by_source():
    scored = ScoredPredictions.from_raw(TARGETS, RAW, TABLE, CLASSES, Calibration(covid_threshold=0.35))
    metrics = scored.metrics(seed=1)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert (metrics["covid"]["tp"], metrics["covid"]["fn"], metrics["covid"]["fp"]) == (2, 1, 1)
    assert metrics["intervals"]["patients"] == 5  # a, b, c, d at x and d at y: kept apart by source
    assert set(metrics["per_source"]) == {"x", "y"}
    x = metrics["per_source"]["x"]
    assert x["n"] == 4 and x["accuracy"] == pytest.approx(1.0)  # rows 0, 1, 3, 5
    assert metrics["per_source"]["y"]["accuracy"] == pytest.approx(0.0)  # rows 2, 4
    expected = classification_metrics(TARGETS, RAW, CLASSES, predictions=scored.predicted, groups=None)
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    whole = scored.metrics(by_source=False, seed=1)
    assert "per_source" not in whole and whole["intervals"] == metrics["intervals"]  # seeded


def test_one_source_has_no_breakdown_and_per_source_required_says_so():
    table = TABLE.assign(source="only")
    scored = ScoredPredictions.from_raw(TARGETS, RAW, table, CLASSES, Calibration())
    assert "per_source" not in scored.metrics()
    with pytest.raises(DatasetError, match="data.csv: the source column has one value \\('only'\\)"):
        per_source_required(table, "data.csv")
    with pytest.raises(DatasetError, match="one value \\('empty'\\)"):
        per_source_required(TABLE.assign(source=None), "data.csv")
    per_source_required(TABLE, "data.csv")  # two sources: no error


def test_doubt_is_one_less_the_top_probability_as_the_flags_floor_whatever_the_rule_calls():
    """A COVID threshold calls COVID at 0.4 (row 1) although normal is at 0.6: the doubt is 0.4,
    the same for the risk-coverage curve and the familiarity flag's floor (one definition)."""
    from covidxray.inference.familiarity import Familiarity

    scored = ScoredPredictions.from_raw(TARGETS, RAW, TABLE, CLASSES, Calibration(covid_threshold=0.35))
    np.testing.assert_allclose(scored.doubt(), [0.1, 0.4, 0.3, 0.2, 0.4, 0.1])
    features = np.random.default_rng(0).normal(size=(6, 3))
    floor = Familiarity.fit(features, features, RAW, share=0.4).min_probability
    assert floor == pytest.approx(np.quantile(1 - scored.doubt(), 0.2))
