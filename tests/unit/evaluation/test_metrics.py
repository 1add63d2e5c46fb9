"""Tests for covidxray.evaluation.metrics: classes looked up by name, numbers checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covidxray.evaluation.metrics import EPSILON, classification_metrics, cross_entropy

CLASSES = ("normal", "pneumonia", "covid")  # covid deliberately last
NORMAL, PNEUMONIA, COVID = 0, 1, 2

# true class, probabilities (normal, pneumonia, covid); prediction and covid-vs-rest outcome
Y_TRUE = np.array([COVID, COVID, COVID, NORMAL, NORMAL, PNEUMONIA, PNEUMONIA, PNEUMONIA])
PROBS = np.array([
    [0.1, 0.1, 0.8],  # covid     -> covid      TP
    [0.2, 0.2, 0.6],  # covid     -> covid      TP
    [0.5, 0.3, 0.2],  # covid     -> normal     FN
    [0.7, 0.2, 0.1],  # normal    -> normal     TN
    [0.3, 0.2, 0.5],  # normal    -> covid      FP
    [0.1, 0.6, 0.3],  # pneumonia -> pneumonia  TN
    [0.2, 0.7, 0.1],  # pneumonia -> pneumonia  TN
    [0.6, 0.3, 0.1],  # pneumonia -> normal     TN (for covid)
])


@pytest.fixture
def metrics() -> dict:
    return classification_metrics(Y_TRUE, PROBS, CLASSES)


def test_covid_sensitivity_and_specificity_by_name(metrics):
    covid = metrics["covid"]
    assert (covid["tp"], covid["fn"], covid["tn"], covid["fp"]) == (2, 1, 4, 1)
    assert covid["sensitivity"] == pytest.approx(2 / 3)
    assert covid["specificity"] == pytest.approx(4 / 5)


def test_covid_auc_is_covid_vs_rest(metrics):
    # positives score 0.8, 0.6, 0.2; negatives 0.1, 0.5, 0.3, 0.1, 0.1:
    # 5 + 5 + 3 of the 15 pairs are ranked right
    assert metrics["covid"]["auc"] == pytest.approx(13 / 15)
    assert metrics["covid"]["auc"] == pytest.approx(roc_auc_score(Y_TRUE == COVID, PROBS[:, COVID]))


def test_accuracy_and_counts(metrics):
    assert metrics["n"] == 8
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["classes"] == list(CLASSES)


def test_per_class_precision_recall(metrics):
    per_class = metrics["per_class"]
    assert set(per_class) == set(CLASSES)
    assert per_class["normal"]["precision"] == pytest.approx(1 / 3)
    assert per_class["normal"]["recall"] == pytest.approx(1 / 2)
    assert per_class["pneumonia"]["precision"] == pytest.approx(1.0)
    assert per_class["pneumonia"]["recall"] == pytest.approx(2 / 3)
    assert per_class["covid"]["precision"] == pytest.approx(2 / 3)
    assert per_class["covid"]["recall"] == pytest.approx(2 / 3)
    assert per_class["covid"]["f1"] == pytest.approx(2 / 3)
    assert [per_class[c]["support"] for c in CLASSES] == [2, 3, 3]


def test_confusion_matrix_rows_are_true_classes(metrics):
    assert metrics["confusion_matrix"] == [
        [1, 0, 1],  # true normal
        [1, 2, 0],  # true pneumonia
        [1, 0, 2],  # true covid
    ]


def test_loss_is_mean_negative_log_probability_of_the_true_class(metrics):
    true_probabilities = [0.8, 0.6, 0.2, 0.7, 0.3, 0.6, 0.7, 0.3]
    expected = -sum(math.log(p) for p in true_probabilities) / len(true_probabilities)
    assert metrics["loss"] == pytest.approx(expected)


def test_loss_clips_zero_probabilities():
    loss = cross_entropy(np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert math.isfinite(loss)
    assert loss == pytest.approx(-math.log(EPSILON) / 2)


def test_covid_is_found_wherever_it_sits():
    # the same predictions with the columns in another order give the same covid numbers
    order = [2, 0, 1]  # covid, normal, pneumonia
    remapped_true = np.array([order.index(y) for y in Y_TRUE])
    reordered = classification_metrics(remapped_true, PROBS[:, order], tuple(CLASSES[i] for i in order))
    original = classification_metrics(Y_TRUE, PROBS, CLASSES)
    assert reordered["covid"] == original["covid"]
    assert reordered["per_class"] == original["per_class"]


def test_set_without_covid_has_no_sensitivity_or_auc():
    y_true = np.array([NORMAL, NORMAL, PNEUMONIA])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1]])
    covid = classification_metrics(y_true, probs, CLASSES)["covid"]
    assert covid["sensitivity"] is None
    assert covid["auc"] is None
    assert covid["specificity"] == pytest.approx(2 / 3)
    assert (covid["tp"], covid["fn"], covid["tn"], covid["fp"]) == (0, 0, 2, 1)


def test_set_of_only_covid_has_no_specificity_or_auc():
    y_true = np.array([COVID, COVID])
    probs = np.array([[0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    covid = classification_metrics(y_true, probs, CLASSES)["covid"]
    assert covid["sensitivity"] == pytest.approx(1 / 2)
    assert covid["specificity"] is None
    assert covid["auc"] is None


def test_task_without_covid_has_no_covid_section():
    result = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.4, 0.6]]), ("normal", "pneumonia"))
    assert "covid" not in result
    assert result["accuracy"] == pytest.approx(1.0)


def test_scores_of_a_class_absent_from_the_data_are_none():
    import json

    probabilities = np.array([[0.9, 0.1], [0.8, 0.2]])
    result = classification_metrics(np.array([0, 0]), probabilities, ("covid", "normal"))
    assert result["per_class"]["normal"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert result["per_class"]["covid"]["recall"] == 1.0
    assert "NaN" not in json.dumps(result)


# --- intervals and confounding ------------------------------------------------------------------

from covidxray.evaluation.metrics import (  # noqa: E402
    bootstrap_intervals,
    chance_accuracy,
)


def test_intervals_contain_the_estimate_and_shrink_with_more_patients():
    rng = np.random.default_rng(0)

    def width(patients):
        y = rng.integers(0, 3, patients * 2)
        probabilities = rng.dirichlet(np.ones(3), len(y))
        probabilities[np.arange(len(y)), y] += rng.random(len(y))  # better than chance
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        groups = np.repeat(np.arange(patients), 2)
        result = classification_metrics(y, probabilities, CLASSES, groups=groups, bootstrap=400)
        low, high = result["intervals"]["accuracy"]
        assert low <= result["accuracy"] <= high
        for name in ("sensitivity", "specificity", "auc"):
            assert result["intervals"][name][0] <= result["intervals"][name][1]
        assert result["intervals"]["unit"] == "patient" and result["intervals"]["patients"] == patients
        return high - low

    assert width(400) < width(25)


def test_resampling_patients_widens_intervals_when_a_patients_images_agree():
    """Images of one patient are not independent: treating them as such understates the spread."""
    rng = np.random.default_rng(1)
    patients = 40
    patient_correct = rng.random(patients) < 0.7
    y = np.zeros(patients * 10, dtype=int)
    correct = np.repeat(patient_correct, 10)
    y_pred = np.where(correct, 0, 1)
    probabilities = np.eye(3)[y_pred]
    by_patient = bootstrap_intervals(y, probabilities, y_pred, np.repeat(np.arange(patients), 10), None, samples=500)
    by_image = bootstrap_intervals(y, probabilities, y_pred, np.arange(len(y)), None, samples=500)
    width = lambda r: r["accuracy"][1] - r["accuracy"][0]  # noqa: E731
    assert width(by_patient) > 2 * width(by_image)


def test_bootstrap_is_seeded():
    a = classification_metrics(Y_TRUE, PROBS, CLASSES, groups=np.arange(8), seed=3)["intervals"]
    b = classification_metrics(Y_TRUE, PROBS, CLASSES, groups=np.arange(8), seed=3)["intervals"]
    assert a == b


def test_predictions_override_argmax():
    decided = np.array([COVID, COVID, COVID, NORMAL, COVID, PNEUMONIA, PNEUMONIA, COVID])
    result = classification_metrics(Y_TRUE, PROBS, CLASSES, predictions=decided)
    assert result["covid"]["sensitivity"] == 1.0 and result["covid"]["fp"] == 2
    assert result["accuracy"] == pytest.approx(6 / 8)


def test_chance_accuracy_is_the_commonest_class_share():
    assert chance_accuracy(np.array([0, 0, 0, 1])) == 0.75
    assert chance_accuracy(np.array([2, 2, 1, 0, 1, 2])) == 0.5
    assert math.isnan(chance_accuracy(np.array([], dtype=int)))


# --- risk-coverage ---------------------------------------------------------------------------

from covidxray.evaluation.metrics import risk_coverage  # noqa: E402


def test_risk_coverage_answers_the_least_doubtful_first():
    correct = np.array([True, True, False, True, False, True, True, True, True, False])
    doubt = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.4, 0.5, 0.6, 0.05, 0.7])  # every mistake most doubtful
    result = risk_coverage(correct, doubt)
    points = dict((c, r) for c, r in result["points"])
    assert points[1.0] == pytest.approx(0.3)  # all answered: 3 mistakes in 10
    assert points[0.7] == 0.0  # the 3 most doubtful left out: no mistake left
    assert result["aurc"] == pytest.approx(result["aurc_best"])


def test_risk_coverage_of_a_useless_doubt_is_worse_than_the_best():
    correct = np.array([True] * 7 + [False] * 3)
    doubt = np.arange(10.0)[::-1]  # mistakes least doubtful: answered first
    result = risk_coverage(correct, doubt)
    assert dict(result["points"])[0.5] == pytest.approx(3 / 5)
    assert result["aurc"] > result["aurc_best"] + 0.2
    assert risk_coverage(np.array([], dtype=bool), np.array([]))["aurc"] is None
