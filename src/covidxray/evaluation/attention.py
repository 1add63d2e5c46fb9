"""Heat inside the lungs: the share of a model's Grad-CAM mass that falls inside the lung mask.

A model that reads the disease should look at the lungs; one that reads the source looks at
markers, borders and text. For every test image whose lungs were found reliably, the Grad-CAM map
of the predicted class (:func:`covidxray.inference.heatmaps.grad_cam`, at the model's input size)
is summed inside the lung mask and divided by its total. Beside it stands the share of the image
the lungs cover: what a map spread evenly over the image would score, the bar to beat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd



def heat_shares(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image, the share of ``maps`` ``(n, h, w)`` (non-negative) inside ``masks`` (bool, same
    shape); NaN for an all-zero map."""
    maps = np.asarray(maps, np.float64)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.full(len(maps), np.nan), where=total > 0)


def _summary(heat: np.ndarray, area: np.ndarray) -> dict:
    valid = ~np.isnan(heat)
    return {"heat": float(np.mean(heat[valid])) if valid.any() else None,
            "lung_area": float(np.mean(area[valid])) if valid.any() else None, "images": int(valid.sum())}


def heat_in_lungs(model, images: np.ndarray, lungs: np.ndarray | None, quality, predicted: np.ndarray,
                  table: pd.DataFrame, classes, layer: str | None = None) -> dict:
    """The share of Grad-CAM mass inside the lungs on ``images`` (``(n, size, size, 1)``, the model's
    inputs), overall, per true class (``table["label"]``) and per source (``table["source"]``).

    ``lungs``: the lung masks in the inputs' pixels (None: not segmented); ``quality``: each mask's
    flag (images whose lungs were not found reliably are left out and counted); ``predicted``: the
    class index whose map is taken; ``layer``: the layer Grad-CAM explains (default: the last
    convolutional one, :func:`~covidxray.inference.heatmaps.find_target_layer`). Returns ``{"heat", "lung_area", "images", "left_out",
    "per_class", "per_source"}``, or ``{"images": 0, "left_out": n, "reason"}`` when no image qualifies.
    """
    from covidxray.errors import CovidXrayError
    from covidxray.inference.heatmaps import grad_cam
    from covidxray.inference.lungs import OK

    n = len(images)
    if lungs is None:
        return {"images": 0, "left_out": n, "reason": "no lung masks (a shard folder is not segmented)"}
    ok = np.array([q == OK for q in quality], bool)
    if not ok.any():
        return {"images": 0, "left_out": n, "reason": "no test image's lungs were found reliably"}
    try:
        maps = grad_cam(model, np.asarray(images[ok]), np.asarray(predicted)[ok], layer=layer)
    except CovidXrayError as error:
        return {"images": 0, "left_out": n, "reason": str(error)}
    heat = heat_shares(maps, lungs[ok])
    area = lungs[ok].mean(axis=(1, 2))
    rows = table[ok].reset_index(drop=True)
    result = {**_summary(heat, area), "left_out": int((~ok).sum())}
    for kind, column, names in (("per_class", "label", classes), ("per_source", "source", None)):
        values = rows[column].fillna("").astype(str).to_numpy()
        names = sorted(set(values)) if names is None else [str(c) for c in names]
        result[kind] = {name: _summary(heat[values == name], area[values == name]) for name in names
                        if (values == name).any()}
    return result


def heat_text(heat: dict) -> str:
    """One line on heat inside the lungs, for reports and cards."""
    if not heat.get("images"):
        return f"heat inside the lungs: not measured ({heat.get('reason', 'no image')})"
    text = (f"{heat['heat']:.0%} of the Grad-CAM heat falls inside the lungs on {heat['images']} test images, "
            f"which cover {heat['lung_area']:.0%} of the model's input (what an even map would score)")
    if heat.get("left_out"):
        text += f"; {heat['left_out']} image(s) whose lungs were not found reliably left out"
    return text
