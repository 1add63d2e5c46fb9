"""Lung-aware model inputs: crop to the lungs, blank regions for the probes.
Pure numpy and Pillow: the masks come from the lung segmenter (:mod:`covidxray.inference.lungs`),
and :mod:`covidxray.inference.preprocess` chains these steps the same way for training, predict,
evaluate, serve and export.

``--lungs crop`` keeps the box around both lungs plus a margin (:data:`MARGIN`): the lung masks of
the segmenter (as the SCR and ieee8023 masks it learned from) stop at the heart and the diaphragm's
dome, but the pleura, the costophrenic angles and the lung behind the heart and below the dome lie
just outside them. Images are decoded at twice the model's side (``Preprocessing.decode_side``)
before cropping, so a crop keeps the model's resolution.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: What the shortcut probe blanks: the central box, the segmented lungs, or all but the lungs.
BLANK_REGIONS = ("box", "lungs", "outside-lungs")
#: Margin around the box of both lungs, as a fraction of its width (left, right) or height (top,
#: bottom); more below, where the posterior costophrenic recesses lie under the dome.
MARGIN = (0.06, 0.06, 0.06, 0.12)  # left, top, right, bottom
FULL = (0.0, 0.0, 1.0, 1.0)


def crop_box(mask: np.ndarray, margin=MARGIN) -> tuple[float, float, float, float]:
    """The box around the lungs of ``mask`` plus ``margin``, as fractions ``(x0, y0, x1, y1)`` of the
    image's width and height, clipped to the image; the whole image for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return FULL
    height, width = mask.shape
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    left, top, right, bottom = margin
    box_w, box_h = x1 - x0, y1 - y0
    return (max(0.0, (x0 - left * box_w) / width), max(0.0, (y0 - top * box_h) / height),
            min(1.0, (x1 + right * box_w) / width), min(1.0, (y1 + bottom * box_h) / height))


def resize_box(image: np.ndarray, box, size: int, resample=Image.Resampling.BILINEAR) -> np.ndarray:
    """The ``box`` (fractions) of a 2-D array resized to ``size`` x ``size``."""
    height, width = image.shape
    pixels = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    if tuple(box) == FULL and image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), resample, box=pixels))


def lung_view(image: np.ndarray, mask: np.ndarray | None, size: int, *,
              crop: bool = False) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float, float]]:
    """A ``size`` x ``size`` view of a 2-D uint8 ``image``: ``(view, view_mask, box)``; ``crop``: the
    box around its lungs (:func:`crop_box`).

    ``mask``: the image's lungs (same shape; None or empty: segmentation failed, and the whole
    image is used). ``view_mask`` is the lung mask in the view's pixels (None without ``mask``);
    ``box`` the part of the image the view shows, as fractions.
    """
    found = mask is not None and mask.any()
    box = crop_box(mask) if crop and found else FULL
    view = resize_box(image, box, size)
    view_mask = None
    if mask is not None:
        view_mask = resize_box(mask.astype(np.uint8) * 255, box, size) >= 128
    return view, view_mask, box


def blank_regions(images: np.ndarray, masks: np.ndarray, region: str) -> np.ndarray:
    """A copy of ``images`` ``(n, h, w[, 1])`` with the lungs (``region="lungs"``) or all but the
    lungs (``"outside-lungs"``) set to 0; ``masks``: ``(n, h, w)`` bool."""
    if region not in ("lungs", "outside-lungs"):
        raise ValueError(f"region must be 'lungs' or 'outside-lungs', not {region!r}")
    blank = masks if region == "lungs" else ~masks
    blanked = np.array(images, copy=True)
    if blanked.ndim == 4:
        blank = blank[..., None] & np.ones(blanked.shape, bool)
    blanked[blank] = 0
    return blanked

