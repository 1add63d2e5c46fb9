"""From decoded images to model inputs, the same way everywhere: :class:`Preprocessing`.

A run's ``lungs`` setting (``config.json``) decides what its model sees, and this is the one
place that acts on it: training, ``predict``, ``evaluate``, ``serve``, ``export``,
the probe, the reports and the notebook ask a :class:`Preprocessing` (made from the run's settings)
what to do, and call :meth:`Preprocessing.apply` with images decoded at :attr:`Preprocessing.decode_side`::

    prep = Preprocessing.from_config(config)
    inputs = prep.apply(images, digests)      # images decoded at prep.decode_side
    inputs.images                              # (n, size, size, 1) uint8, what the model takes
    inputs.lungs, inputs.quality, inputs.boxes # the lung masks in the inputs' pixels, their flags, the crops

With ``lungs`` ``crop`` every image is segmented by the run's lung segmenter (masks
cached by pixel digest); an image whose mask is flagged (:data:`covidxray.inference.lungs.QUALITY`)
is used whole, and listed in :attr:`ModelInputs.fallback`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from covidxray.config import LUNG_MODES, refuse_removed_settings
from covidxray.data.lungviews import FULL, lung_view
from covidxray.errors import CovidXrayError
from covidxray.inference.lungs import OK

#: The largest side images are decoded at for a lung crop.
LARGEST_DECODE = 1024


@dataclass
class ModelInputs:
    """Model inputs and, where segmented, their lungs."""

    images: np.ndarray  # (n, size, size, 1) uint8
    lungs: np.ndarray | None = None  # (n, size, size) bool: lung masks in the inputs' pixels
    quality: list[str] | None = None  # per image, the mask's flag ("ok", "no-lung", ...)
    boxes: np.ndarray | None = None  # (n, 4): the part of each image shown, as fractions (x0, y0, x1, y1)

    @property
    def fallback(self) -> list[int]:
        """Rows whose lungs were not found reliably (flagged): used whole, not cropped."""
        return [] if self.quality is None else [i for i, q in enumerate(self.quality) if q != OK]


@dataclass
class Preprocessing:
    """What a run's model sees: ``size`` pixels a side and the lungs (``none`` or ``crop``)."""

    size: int
    lungs: str = "none"
    segmenter_path: str | None = None  # a lung segmenter folder or preset:NAME; None: the shipped one
    cache_dir: str | None = None
    _segmenter: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.lungs not in LUNG_MODES:
            raise CovidXrayError(f"--lungs must be one of {', '.join(LUNG_MODES)}; got {self.lungs!r}")

    @classmethod
    def from_config(cls, config, cache_dir: str | None = None) -> Preprocessing:
        """The preprocessing of a run's settings; lung masks cached in ``cache_dir`` (default ``~/.cache/covidxray``)."""
        return cls(int(config.image_size), config.lungs, segmenter_path=config.lung_segmenter, cache_dir=cache_dir)

    @classmethod
    def from_settings(cls, settings: dict, size: int = 1, where: str = "the run's settings") -> Preprocessing:
        """The preprocessing that :meth:`settings` wrote into a run's ``metrics.json`` or config (absent:
        none); ``where`` names them in the error that refuses a run trained with a removed setting
        (:func:`~covidxray.config.refuse_removed_settings`)."""
        refuse_removed_settings(settings, where)
        return cls(size, settings.get("lungs") or "none")

    def settings(self) -> dict:
        """What a run records of its preprocessing (``metrics.json``'s run entry, the ONNX metadata)."""
        return {"lungs": self.lungs}

    @property
    def segments(self) -> bool:
        """Whether the model's inputs need the lungs segmented (``--lungs crop``): it sees the box
        around the lungs rather than the whole decoded film."""
        return self.lungs != "none"

    @property
    def decode_side(self) -> int:
        """The side images must be decoded at for :meth:`apply`: the model's, or twice it (at most
        :data:`LARGEST_DECODE`, never less than the model's) where the lungs are cropped,
        so that a crop keeps the model's resolution."""
        return min(2 * self.size, max(self.size, LARGEST_DECODE)) if self.segments else self.size

    def fallback(self, paths, quality) -> dict[str, str]:
        """The images used whole because their lungs were not found reliably: path -> the mask's flag
        (empty where the model does not need the lungs)."""
        if not self.segments or quality is None:
            return {}
        return {str(path): q for path, q in zip(paths, quality) if q != OK}

    @property
    def segmenter(self):
        """The lung segmenter, loaded on first use."""
        if self._segmenter is None:
            from covidxray.inference.lungs import load_segmenter

            self._segmenter = load_segmenter(self.segmenter_path)
        return self._segmenter

    def segment(self, images, digests=None) -> list:
        """Lung masks (:class:`~covidxray.inference.lungs.LungMask`) of decoded images, cached by digest."""
        digests = [None] * len(images) if digests is None else list(digests)
        return self.segmenter.segment_cached(images, digests, cache_dir=self.cache_dir)

    def apply(self, images, digests=None, *, lungs: bool = False) -> ModelInputs:
        """Model inputs for images ``(n, side, side[, 1])`` uint8 decoded at :attr:`decode_side`.

        ``digests``: each image's pixel digest (the mask cache's key; None: not cached).
        ``lungs``: also segment when the lung mode does not need it (for heat-in-lungs, the lung
        probes and outlines).
        """
        images = np.asarray(images)
        if images.ndim == 4:
            images = images[..., 0]
        if images.ndim != 3 or images.shape[1:] != (self.decode_side, self.decode_side):
            raise CovidXrayError(f"images of shape {images.shape[1:]} given; this run's model takes images decoded at "
                                 f"{self.decode_side}x{self.decode_side} (lungs {self.lungs}, size {self.size})")
        if not self.segments and not lungs:
            return ModelInputs(images[..., None])
        masks = self.segment(images, digests)
        views = np.empty((len(images), self.size, self.size), np.uint8)
        view_masks = np.zeros((len(images), self.size, self.size), bool)
        boxes = np.tile(np.asarray(FULL), (len(images), 1))
        for i, (image, found) in enumerate(zip(images, masks)):
            reliable = found.quality == OK  # flagged: the whole image
            views[i], view_masks[i], boxes[i] = lung_view(image, found.mask, self.size,
                                                          crop=reliable and self.segments)
        return ModelInputs(views[..., None], view_masks, [m.quality for m in masks], boxes)

    def short(self) -> list[str]:
        """The preprocessing in a few words per setting that is on: ``["lung crop"]``."""
        return ["lung crop"] if self.segments else []

    def describe(self) -> str:
        """The preprocessing in words, for reports and cards."""
        return {"none": "the whole image", "crop": "cropped to the box around both lungs (plus a margin)"}[self.lungs]
