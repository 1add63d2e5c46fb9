"""One X-ray at a time: class probabilities and a Grad-CAM heatmap, from a run loaded once.

Used by ``covidxray serve`` (uploads, decoded from memory) and by the notebook (files)::

    analyzer = XrayAnalyzer("runs/darkcovidnet-three-class")
    result = analyzer.analyse_file("xray.dcm")
    result.label, result.probabilities, result.heatmap_png
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidxray.data.images import read_image, resize_square
from covidxray.inference.predictor import Predictor, load_predictor

DISPLAY_SIZE = 384  # side in pixels of the X-ray and heatmap images returned


@dataclass
class Analysis:
    """The result for one X-ray."""

    label: str
    probabilities: dict[str, float]
    image_png: bytes  # the X-ray as read (grayscale, longest side DISPLAY_SIZE px)
    heatmap_png: bytes  # the Grad-CAM heatmap of the predicted class over it (RGB, same size)


class XrayAnalyzer:
    """A run's model, loaded once, answering one X-ray at a time (safe to share between threads).

    ``run``: a run folder, ``preset:NAME``, None (the default preset) or a loaded
    :class:`~covidxray.inference.predictor.Predictor` (Keras engine: the heatmap takes gradients).
    """

    def __init__(self, run: str | Path | Predictor | None = None):
        self.predictor = run if isinstance(run, Predictor) else load_predictor(run)
        self.run_dir = self.predictor.path
        self.config = self.predictor.config
        self.calibration = self.predictor.calibration  # temperature and COVID threshold, as predict applies them
        self.classes = self.predictor.classes
        self._lock = threading.Lock()  # one prediction at a time: Keras models are not thread-safe

    def analyse_file(self, path: str | Path) -> Analysis:
        """:meth:`analyse` for a file on disk."""
        return self._analyse(read_image(path))

    def analyse(self, filename: str, data: bytes) -> Analysis:
        """Decode ``data`` (the bytes of file ``filename``), predict, and draw the heatmap."""
        return self._analyse(read_image(filename, data=data))

    def _analyse(self, image: np.ndarray) -> Analysis:
        from covidxray.inference.heatmaps import grad_cam, overlay

        model_input = resize_square(image, self.config.image_size)[None, ..., None]
        with self._lock:
            probabilities, decided = self.predictor.predict(model_input)
            best = int(decided[0])
            heatmap = grad_cam(self.predictor.model, model_input, class_indices=[best])[0]
        probabilities = probabilities[0]
        shown = _fit(image, DISPLAY_SIZE)
        return Analysis(
            label=self.classes[best],
            probabilities={c: float(p) for c, p in zip(self.classes, probabilities)},
            image_png=_png(shown),
            heatmap_png=_png(overlay(shown, heatmap)),  # overlay resizes the map to the image
        )


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` resized so that its longest side is ``side`` pixels, keeping its aspect ratio."""
    from PIL import Image

    scale = side / max(image.shape)
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
