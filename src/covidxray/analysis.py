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

DISPLAY_SIZE = 384  # side in pixels of the X-ray and heatmap images returned


@dataclass
class Analysis:
    """The result for one X-ray."""

    label: str
    probabilities: dict[str, float]
    image_png: bytes  # the X-ray as read (grayscale, longest side DISPLAY_SIZE px)
    heatmap_png: bytes  # the Grad-CAM heatmap of the predicted class over it (RGB, same size)


class XrayAnalyzer:
    """A run's model, loaded once, answering one X-ray at a time (safe to share between threads)."""

    def __init__(self, run_dir: str | Path):
        from covidxray.evaluate import load_calibration
        from covidxray.rundir import RunDir

        run = RunDir(run_dir)
        self.run_dir = run.path
        self.config = run.load_config()
        self.model = run.load_model()
        self.calibration = load_calibration(run)  # temperature and COVID threshold, as predict applies them
        self.classes = tuple(self.config.classes)
        self._lock = threading.Lock()  # one prediction at a time: Keras models are not thread-safe

    def analyse_file(self, path: str | Path) -> Analysis:
        """:meth:`analyse` for a file on disk."""
        from covidxray.data.images import read_image

        return self._analyse(read_image(path))

    def analyse(self, filename: str, data: bytes) -> Analysis:
        """Decode ``data`` (the bytes of file ``filename``), predict, and draw the heatmap."""
        from covidxray.data.images import read_image

        return self._analyse(read_image(filename, data=data))

    def _analyse(self, image: np.ndarray) -> Analysis:
        from covidxray.calibration import decide, scale
        from covidxray.data.images import resize_square
        from covidxray.heatmaps import grad_cam, overlay
        from covidxray.labels import COVID
        from covidxray.predict import predict_arrays

        model_input = resize_square(image, self.config.image_size)[None, ..., None]
        covid = self.classes.index(COVID) if COVID in self.classes else None
        with self._lock:
            probabilities = scale(predict_arrays(self.model, model_input), self.calibration.temperature)
            best = int(decide(probabilities, covid, self.calibration.covid_threshold)[0])
            heatmap = grad_cam(self.model, model_input, class_indices=[best])[0]
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
