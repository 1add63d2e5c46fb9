"""Metrics from predictions: accuracy, loss, per-class scores, COVID sensitivity/specificity/AUC.

Classes are looked up by name, never by position.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from covidxray.labels import COVID

EPSILON = 1e-7


def cross_entropy(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-probability of the true class (what Keras reports as loss)."""
    picked = probabilities[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0))))


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]) -> dict:
    """All metrics of one labelled set; ``y_true`` holds indices into ``classes``."""
    y_true = np.asarray(y_true)
    y_pred = probabilities.argmax(axis=1)
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
    if COVID in classes:
        result["covid"] = covid_metrics(y_true, probabilities, classes.index(COVID))
    return result


def _number(value) -> float | None:
    """A float for JSON; None where the score is undefined (no images of the class, or none predicted)."""
    return None if np.isnan(value) else float(value)


def covid_metrics(y_true: np.ndarray, probabilities: np.ndarray, covid: int) -> dict:
    """COVID vs the rest: sensitivity, specificity and ROC AUC (None when a side is empty)."""
    positive = y_true == covid
    predicted = probabilities.argmax(axis=1) == covid
    tp, fn = int(np.sum(predicted & positive)), int(np.sum(~predicted & positive))
    tn, fp = int(np.sum(~predicted & ~positive)), int(np.sum(predicted & ~positive))
    both_sides = positive.any() and (~positive).any()
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "auc": float(roc_auc_score(positive, probabilities[:, covid])) if both_sides else None,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }
