"""The shortcut probe: how well can a model tell the classes apart without seeing the lungs?

DeGrave, Janizek and Lee (Nature Machine Intelligence, 2021) showed that COVID-19 classifiers
trained on data where each class comes from its own hospital keep much of their accuracy when
the lungs are hidden: they read the source (markers, text, borders, exposure), not the disease.
The probe (:mod:`covidxray.training.probe`) trains the same model on the same split with the
central lung field blanked out by :func:`blank_center`; its test scores measure how much the
data lets a model cheat.
"""

from __future__ import annotations

import numpy as np

#: Side of the blanked central square, as a fraction of the image side: the lung fields of a
#: frontal X-ray lie inside it; borders, corners, markers and text stay visible.
DEFAULT_FRACTION = 0.75


def center_mask(height: int, width: int, fraction: float = DEFAULT_FRACTION) -> np.ndarray:
    """A ``(height, width)`` bool mask, True in the central ``fraction`` x ``fraction`` box."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1); got {fraction}")
    top, left = round(height * (1 - fraction) / 2), round(width * (1 - fraction) / 2)
    mask = np.zeros((height, width), bool)
    mask[top:height - top, left:width - left] = True
    return mask


def blank_center(images: np.ndarray, fraction: float = DEFAULT_FRACTION) -> np.ndarray:
    """A copy of ``images`` ``(n, h, w[, c])`` with the central ``fraction`` x ``fraction`` box set to 0."""
    mask = center_mask(*np.shape(images)[1:3], fraction)
    blanked = np.array(images, copy=True)
    blanked[:, mask] = 0
    return blanked
