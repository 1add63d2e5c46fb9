"""Metrics from predictions: accuracy, loss, per-class scores, COVID sensitivity/specificity/AUC,
95% intervals by resampling patients, and the breakdown per source.

Classes are looked up by name, never by position.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from covidxray.labels import covid_index

EPSILON = 1e-7
#: Bootstrap resamples for the 95% intervals.
BOOTSTRAP_SAMPLES = 1000
INTERVAL_METRICS = ("accuracy", "sensitivity", "specificity", "auc")


def cross_entropy(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-probability of the true class (what Keras reports as loss)."""
    picked = probabilities[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0)))) + 0.0  # + 0.0: no -0.0


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], *,
                           predictions: np.ndarray | None = None, groups: np.ndarray | None = None,
                           bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """All metrics of one labelled set; ``y_true`` holds indices into ``classes``.

    ``predictions``: the decided classes (default: the most probable). ``groups``: one patient
    id per image; with it, ``intervals`` holds 95% bootstrap intervals that resample patients.
    """
    y_true = np.asarray(y_true)
    y_pred = probabilities.argmax(axis=1) if predictions is None else np.asarray(predictions)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=np.nan
    )
    result = {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)),
        "loss": cross_entropy(y_true, probabilities),
        "per_class": {
            name: {"precision": _number(precision[i]), "recall": _number(recall[i]),
                   "f1": _number(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }
    covid = covid_index(classes)
    if covid is not None:
        result["covid"] = covid_metrics(y_true, probabilities, covid, y_pred)
    if groups is not None and bootstrap and len(y_true):
        result["intervals"] = bootstrap_intervals(y_true, probabilities, y_pred, groups, covid,
                                                  samples=bootstrap, seed=seed)
    return result


def _number(value) -> float | None:
    """A float for JSON; None where the score is undefined (no images of the class, or none predicted)."""
    return None if np.isnan(value) else float(value)


def covid_metrics(y_true: np.ndarray, probabilities: np.ndarray, covid: int, y_pred: np.ndarray | None = None) -> dict:
    """COVID vs the rest: sensitivity, specificity and ROC AUC (None when a side is empty)."""
    positive = y_true == covid
    predicted = (probabilities.argmax(axis=1) if y_pred is None else y_pred) == covid
    tp, fn = int(np.sum(predicted & positive)), int(np.sum(~predicted & positive))
    tn, fp = int(np.sum(~predicted & ~positive)), int(np.sum(predicted & ~positive))
    both_sides = positive.any() and (~positive).any()
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "auc": float(roc_auc_score(positive, probabilities[:, covid])) if both_sides else None,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }


def bootstrap_intervals(y_true: np.ndarray, probabilities: np.ndarray, y_pred: np.ndarray, groups, covid: int | None,
                        *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap intervals of accuracy (and COVID sensitivity, specificity, AUC).

    Whole patients are resampled with replacement, so a patient's images stay together: images
    of one patient are not independent, and resampling images would give intervals too narrow.
    A resample where a metric is undefined (no COVID image, say) is left out for that metric.
    """
    patients, resamples = patient_resamples(groups, samples, seed)
    correct = y_pred == y_true
    values: dict[str, list[float]] = {name: [] for name in INTERVAL_METRICS}
    for rows in resamples:
        values["accuracy"].append(correct[rows].mean())
        if covid is None:
            continue
        positive, called = y_true[rows] == covid, y_pred[rows] == covid
        if positive.any():
            values["sensitivity"].append(called[positive].mean())
        if (~positive).any():
            values["specificity"].append((~called[~positive]).mean())
        if positive.any() and (~positive).any():
            values["auc"].append(roc_auc_score(positive, probabilities[rows, covid]))
    tail = 100 * (1 - level) / 2
    intervals = {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
                 for name, v in values.items() if len(v) >= samples // 2}
    return {**intervals, "level": level, "resamples": samples, "unit": "patient", "patients": patients}


def patient_resamples(groups, samples: int, seed: int):
    """The number of groups (patients), and the row indices of ``samples`` resamples of whole groups
    drawn with replacement (seeded: the same groups and seed give the same resamples)."""
    _, group_index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    members = np.split(np.argsort(group_index, kind="stable"), np.cumsum(np.bincount(group_index))[:-1])
    rng = np.random.default_rng(seed)
    return len(members), (np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
                          for _ in range(samples))


#: Shares of the images answered at which :func:`risk_coverage` reports the error rate.
COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.5)


def risk_coverage(correct: np.ndarray, doubt: np.ndarray) -> dict:
    """Selective answering: the error rate among the images answered when the most doubtful are left
    unanswered first, at each of :data:`COVERAGES` (the share answered), and the area under the whole
    risk-coverage curve (``aurc``: the mean error rate over coverages 1/n .. 1; lower is better; a
    doubt that ranks every mistake last would reach ``aurc_best``)."""
    correct, doubt = np.asarray(correct, dtype=bool), np.asarray(doubt, dtype=float)
    if not len(correct):
        return {"aurc": None, "aurc_best": None, "points": []}
    answered = np.arange(1, len(correct) + 1)

    def curve(order):
        return np.cumsum(~correct[order]) / answered

    risk = curve(np.argsort(doubt, kind="stable"))
    best = curve(np.argsort(~correct, kind="stable"))
    points = [[c, float(risk[max(int(round(c * len(correct))), 1) - 1])] for c in COVERAGES]
    return {"aurc": float(risk.mean()), "aurc_best": float(best.mean()), "points": points}


def chance_accuracy(targets: np.ndarray) -> float:
    """Accuracy of always answering the most frequent class (what a model that learned nothing scores)."""
    targets = np.asarray(targets)
    return float(np.bincount(targets).max() / len(targets)) if len(targets) else float("nan")
