"""covidxray.reports.plots: the figures, drawn from numbers without pyplot."""

from __future__ import annotations

import numpy as np
import pandas as pd

from covidxray.reports.plots import (
    CORRECT_COLOR,
    MISTAKE_COLOR,
    pick_examples,
    plot_confusion,
    plot_history,
    plot_predictions,
    plot_reliability,
)


def test_pick_examples_shows_mistakes_first_then_every_class():
    y_true = np.repeat([0, 1, 2], 10)
    predicted = y_true.copy()
    predicted[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]] = 2  # 15 mistakes (the first 10 and 5 more)
    chosen = pick_examples(y_true, predicted, count=24, seed=0)
    assert len(chosen) == 24 and list(chosen) == sorted(set(chosen))
    assert (predicted[chosen] != y_true[chosen]).sum() >= 12  # up to half the grid is mistakes
    assert set(y_true[chosen]) == {0, 1, 2}
    np.testing.assert_array_equal(pick_examples(y_true, predicted, count=24, seed=0), chosen)  # seeded
    assert list(pick_examples(np.array([0, 1]), np.array([0, 1]), count=24)) == [0, 1]  # fewer than the grid


def test_plot_history_and_confusion():
    history = pd.DataFrame({"accuracy": [0.5, 0.8], "loss": [1.0, 0.4], "val_accuracy": [0.4, 0.7],
                            "val_loss": [1.2, 0.6]})
    figure = plot_history(history)
    accuracy, loss = figure.axes
    assert [line.get_label() for line in accuracy.lines] == ["training", "validation"]
    np.testing.assert_array_equal(loss.lines[1].get_ydata(), [1.2, 0.6])
    matrix = plot_confusion([[3, 1], [0, 4]], ("covid", "normal"), title="t")
    axes = matrix.axes[0]
    assert axes.get_title() == "t" and [t.get_text() for t in axes.texts] == ["3", "1", "0", "4"]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["covid", "normal"]


def test_plot_predictions_titles_and_colours():
    images = np.zeros((3, 8, 8, 1), dtype=np.uint8)
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    figure = plot_predictions(images, np.array([0, 0, 1]), probabilities, ("covid", "normal"), columns=2,
                              predicted=np.array([0, 1, 1]))
    titles = [(a.get_title(), a.title.get_color()) for a in figure.axes if a.get_title()]
    assert titles == [("true: covid\npred: covid (0.90)", CORRECT_COLOR),
                      ("true: covid\npred: normal (0.70)", MISTAKE_COLOR),
                      ("true: normal\npred: normal (0.40)", CORRECT_COLOR)]  # the decided class, not the argmax
    assert len(figure.axes) == 4  # a 2 x 2 grid, the last cell empty


def test_plot_reliability_labels_the_eces():
    bins = {"confidence": [0.6, 0.9], "accuracy": [0.5, 0.8], "count": [3, 7]}
    figure = plot_reliability({"bins_before": bins, "bins_after": bins, "ece_before": 0.12, "ece_after": 0.034})
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert labels == ["perfectly calibrated", "model (ECE 12.0%)", "temperature-scaled (ECE 3.4%)"]
