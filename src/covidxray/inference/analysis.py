"""One X-ray at a time: class probabilities and a Grad-CAM heatmap, from a run loaded once.

Used by ``covidxray serve`` (uploads, decoded from memory) and by the notebook (files)::

    analyzer = XrayAnalyzer("runs/darkcovidnet-three-class")
    result = analyzer.analyse_file("xray.dcm")
    result.label, result.probabilities, result.heatmap_png
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidxray.data.images import read_image, resize_square
from covidxray.inference.lungs import OK
from covidxray.inference.predictor import Predictor, load_predictor

DISPLAY_SIZE = 384  # side in pixels of the X-ray and heatmap images returned
#: Longest side kept of an upload for display (the X-ray at DISPLAY_SIZE, the heatmap figure at heatmaps.FIGURE_SIDE).
PICTURE_SIDE = 1024
#: Threads drawing and encoding the images of a batch's answers.
RENDER_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class Analysis:
    """The result for one X-ray."""

    label: str
    probabilities: dict[str, float]
    image_png: bytes  # the X-ray as read (grayscale, longest side DISPLAY_SIZE px)
    heatmap_png: bytes  # the Grad-CAM figure of the predicted class (heatmaps.heatmap_figure: the whole X-ray,
    #                     the map over what the model saw, the crop's box, the lungs' outline, class, colour bar)
    lungs: str = OK  # the lung mask's flag: ok, or why no outline is drawn (and, for --lungs crop, the whole image used)
    cropped: bool = False  # the heatmap shows the lungs' box the model saw (--lungs crop), not the whole X-ray
    unlike_training: bool | None = None  # looks unlike the run's training data (None: the run cannot tell)


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
        self.predictor.preprocessing.segmenter  # noqa: B018  (loaded now: the lung outline of every answer needs it)

    def analyse_file(self, path: str | Path) -> Analysis:
        """:meth:`analyse` for a file on disk."""
        return self._analyse(read_image(path))

    def analyse(self, filename: str, data: bytes) -> Analysis:
        """Decode ``data`` (the bytes of file ``filename``), predict, and draw the heatmap."""
        return self._analyse(read_image(filename, data=data))

    def upload(self, filename: str, data: bytes) -> Upload:
        """Decode ``data`` into what :meth:`analyse_uploads` needs (thread-safe; the full-size image
        is dropped here, so a queued upload holds at most a few megabytes)."""
        return self._upload(read_image(filename, data=data))

    def analyse_uploads(self, uploads: list[Upload]) -> list[Analysis]:
        """Predict and explain several decoded uploads in one batch: segmentation, prediction,
        familiarity and Grad-CAM each run once for all of them."""
        from covidxray.inference.familiarity import UNLIKE_SHORT
        from covidxray.inference.heatmaps import figure_png, fit_side, grad_cam, heatmap_figure

        with self._lock:
            inputs = self.predictor.prepare(np.stack([u.model_input for u in uploads]), lungs=True)
            probabilities, decided = self.predictor.predict(inputs.images)
            heatmaps = grad_cam(self.predictor.model, inputs.images, class_indices=[int(d) for d in decided])
            unlike = self.predictor.unlike_training(inputs.images, probabilities)
        crop = self.predictor.preprocessing.segments

        def render(i: int) -> Analysis:
            quality = inputs.quality[i]
            image = uploads[i].picture
            label = int(decided[i])
            flagged = unlike is not None and bool(unlike[i])
            figure = heatmap_figure(fit_side(image), heatmaps[i], label=self.classes[label],
                                    probability=float(probabilities[i, label]), box=inputs.boxes[i],  # what the model saw
                                    outline=inputs.lungs[i] if quality == OK else None, crop=crop,
                                    note=UNLIKE_SHORT.upper() if flagged else None)
            return Analysis(
                label=self.classes[label],
                probabilities={c: float(p) for c, p in zip(self.classes, probabilities[i])},
                image_png=_png(_fit(image, DISPLAY_SIZE)),
                heatmap_png=figure_png(figure),
                lungs=quality,
                cropped=crop and quality == OK,
                unlike_training=None if unlike is None else bool(unlike[i]),
            )

        if len(uploads) == 1:
            return [render(0)]
        with ThreadPoolExecutor(min(len(uploads), RENDER_THREADS)) as pool:  # PNG encoding releases the GIL
            return list(pool.map(render, range(len(uploads))))

    def _upload(self, image: np.ndarray) -> Upload:
        side = self.predictor.decode_side
        picture = image if max(image.shape) <= PICTURE_SIDE else _fit(image, PICTURE_SIDE)
        return Upload(resize_square(image, side), picture)

    def _analyse(self, image: np.ndarray) -> Analysis:
        return self.analyse_uploads([self._upload(image)])[0]


@dataclass
class Upload:
    """A decoded X-ray, reduced to what an analysis needs."""

    model_input: np.ndarray  # square, at the predictor's decode side, from the full image
    picture: np.ndarray  # the image for display, longest side at most PICTURE_SIDE


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` resized so that its longest side is ``side`` pixels, keeping its aspect ratio."""
    from PIL import Image

    scale = side / max(image.shape)
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # zlib level 1: a 384 px RGB heatmap encodes in 15 ms instead of 80 (level 6), 20% larger
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
