"""Figures from numbers. Each function returns a matplotlib Figure; callers save it.

Uses matplotlib's object API (no pyplot), so nothing here touches global state or needs a
display.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

MISTAKE_COLOR, CORRECT_COLOR = "#c0392b", "#1e8449"


def plot_history(history: pd.DataFrame) -> Figure:
    """Training vs validation accuracy and loss per epoch (``acc.png``)."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    epochs = np.arange(1, len(history) + 1)
    for axes, metric in zip(figure.subplots(1, 2), ("accuracy", "loss")):
        axes.plot(epochs, history[metric], marker="o", markersize=3, label="training")
        if f"val_{metric}" in history:
            axes.plot(epochs, history[f"val_{metric}"], marker="o", markersize=3, label="validation")
        axes.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def plot_confusion(matrix, classes, title: str = "test confusion matrix") -> Figure:
    """Counts per (true, predicted) class pair, with class names (``mat.png``)."""
    matrix = np.asarray(matrix)
    figure = Figure(figsize=(1.6 * len(classes) + 2.5, 1.4 * len(classes) + 2), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = np.arange(len(classes))
    axes.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes,
             xlabel="predicted", ylabel="true", title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black", fontsize=12)
    return figure


def plot_predictions(images: np.ndarray, y_true: np.ndarray, probabilities: np.ndarray, classes,
                     columns: int = 6, predicted: np.ndarray | None = None, heatmaps: np.ndarray | None = None,
                     outlines=None, title: str | None = None) -> Figure:
    """A grid of images titled true / predicted (probability); mistakes in red (``pred.png``).

    ``images``: grayscale ``(n, H, W[, 1])`` in [0, 255]. ``predicted``: the decided classes (default:
    the most probable), e.g. under a COVID threshold. ``heatmaps``: ``(n, H, W)`` Grad-CAM maps, drawn
    over the images (:func:`~covidxray.inference.heatmaps.draw_heatmap`, with the lungs' ``outlines``
    where given) with one colour bar; ``title``: how the tiles were chosen. Every grid ends with the
    not-for-diagnosis line.
    """
    from covidxray.inference.heatmaps import NOTICE, draw_heatmap, heat_colorbar

    if predicted is None:
        predicted = probabilities.argmax(axis=1)
    count = len(images)
    rows = max(1, int(np.ceil(count / columns)))
    figure = Figure(figsize=(2.3 * columns + (1.2 if heatmaps is not None else 0), 2.6 * rows + 0.8),
                    layout="constrained")
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    heat = None
    for index, axes in enumerate(grid):
        axes.axis("off")
        if index >= count:
            continue
        label = int(predicted[index])
        wrong = label != int(y_true[index])
        if heatmaps is not None:
            heat = draw_heatmap(axes, images[index], heatmaps[index],
                                outline=None if outlines is None else outlines[index])
        else:
            axes.imshow(np.squeeze(images[index]), cmap="gray", vmin=0, vmax=255)
        axes.set_title(
            f"true: {classes[int(y_true[index])]}\npred: {classes[label]} ({probabilities[index, label]:.2f})",
            fontsize=9, color=MISTAKE_COLOR if wrong else CORRECT_COLOR,
        )
        if wrong:
            axes.axis("on")
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set(color=MISTAKE_COLOR, linewidth=3)
    if heat is not None:
        heat_colorbar(figure, heat, grid.tolist())
    if title:
        figure.suptitle(title, fontsize=11)
    figure.supxlabel(NOTICE, fontsize=8, color="#9a3b00")
    return figure


def pick_examples(y_true: np.ndarray, predicted: np.ndarray, count: int = 24, seed: int = 0) -> np.ndarray:
    """Indices to show, in the order shown: mistakes first (up to half the grid, drawn at random, in
    test order), then a random sample per class of the rest (in test order)."""
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(predicted != y_true)
    chosen = list(rng.permutation(wrong)[: count // 2])
    taken = set(chosen)
    remaining = [i for i in rng.permutation(len(y_true)) if i not in taken]
    by_class = {c: [i for i in remaining if y_true[i] == c] for c in np.unique(y_true)}
    sample = []
    while len(chosen) + len(sample) < min(count, len(y_true)) and any(by_class.values()):
        for c in list(by_class):
            if by_class[c] and len(chosen) + len(sample) < count:
                sample.append(by_class[c].pop())
    return np.array(sorted(chosen) + sorted(sample), dtype=int)


def examples_title(y_true: np.ndarray, predicted: np.ndarray, shown: np.ndarray, seed: int, count: int = 24, *,
                   heatmaps: bool = True, lungs: bool = False) -> str:
    """How :func:`pick_examples` (``count`` tiles, ``seed``) chose the tiles of ``pred.png``, with the
    counts, and what their colours mean, for its title."""
    mistakes = int((predicted != y_true).sum())
    text = (f"{len(shown)} of {len(y_true)} test images: mistakes first (red; {min(mistakes, count // 2)} of the "
            f"{mistakes}), then a random sample per class (seed {seed})")
    if heatmaps:
        text += "\ncoloured by Grad-CAM of the predicted class" + ("; white: the lungs' outline" if lungs else "")
    return text


def plot_reliability(summary: dict, title: str = "test reliability") -> Figure:
    """Accuracy against confidence per bin, before and after temperature scaling (``calibration.png``).

    ``summary`` holds ``bins_before`` / ``bins_after`` (confidence, accuracy, count) and the ECEs.
    """
    figure = Figure(figsize=(5, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfectly calibrated")
    for key, label, marker in (("before", "model", "o"), ("after", "temperature-scaled", "s")):
        bins = summary[f"bins_{key}"]
        sizes = 10 + 90 * np.asarray(bins["count"]) / max(1, max(bins["count"], default=1))
        axes.plot(bins["confidence"], bins["accuracy"], marker=marker, linewidth=1,
                  label=f"{label} (ECE {100 * summary[f'ece_{key}']:.1f}%)")
        axes.scatter(bins["confidence"], bins["accuracy"], s=sizes, alpha=0.3)
    axes.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="confidence (top-class probability)", ylabel="accuracy",
             title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    return figure
