"""covidxray.reports.plots: the figures, drawn from numbers without pyplot."""

from __future__ import annotations

import numpy as np
import pandas as pd

from covidxray.reports.plots import (
    CORRECT_COLOR,
    MISTAKE_COLOR,
    examples_title,
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
    assert len(chosen) == 24 == len(set(chosen))
    wrong = predicted[chosen] != y_true[chosen]
    assert wrong[:12].all() and list(chosen[:12]) == sorted(chosen[:12])  # half the grid: mistakes, first
    assert list(chosen[12:]) == sorted(chosen[12:])  # then the sample, in test order
    assert set(y_true[chosen]) == {0, 1, 2}
    np.testing.assert_array_equal(pick_examples(y_true, predicted, count=24, seed=0), chosen)  # seeded
    assert list(pick_examples(np.array([0, 1]), np.array([0, 1]), count=24)) == [0, 1]  # fewer than the grid
    assert list(pick_examples(np.array([0, 1, 2]), np.array([0, 2, 2]), count=24)) == [1, 0, 2]  # the mistake first
    title = examples_title(y_true, predicted, chosen, seed=0)
    assert title.startswith("24 of 30 test images: mistakes first (red; 12 of the 15), then a random sample per class")
    assert "Grad-CAM" in title and "lungs" not in title and "Grad-CAM" not in examples_title(y_true, predicted, chosen, 0,
                                                                                             heatmaps=False)


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
    assert "never for diagnosis" in figure.get_supxlabel()


def test_plot_predictions_draws_heatmaps_with_one_colour_bar_and_says_how_tiles_were_chosen():
    images = np.full((3, 8, 8, 1), 100, dtype=np.uint8)
    maps = np.random.default_rng(0).random((3, 8, 8))
    outlines = np.zeros((3, 8, 8), bool)
    outlines[0, 2:6, 2:6] = True
    figure = plot_predictions(images, np.array([0, 0, 1]), np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]),
                              ("covid", "normal"), columns=3, heatmaps=maps, outlines=outlines, title="how")
    tiles, bar = figure.axes[:3], figure.axes[3]
    assert len(figure.axes) == 4 and "Grad-CAM" in bar.get_ylabel()  # three tiles and one colour bar
    assert [len(a.get_images()) for a in tiles] == [2, 2, 2]  # the image and its heatmap
    np.testing.assert_allclose(tiles[1].get_images()[1].get_array(), maps[1])
    assert len(tiles[0].collections) == 1 and not tiles[1].collections  # the lungs' outline where there is one
    assert figure.get_suptitle() == "how"


def test_plot_reliability_labels_the_eces():
    bins = {"confidence": [0.6, 0.9], "accuracy": [0.5, 0.8], "count": [3, 7]}
    figure = plot_reliability({"bins_before": bins, "bins_after": bins, "ece_before": 0.12, "ece_after": 0.034})
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert labels == ["perfectly calibrated", "model (ECE 12.0%)", "temperature-scaled (ECE 3.4%)"]
