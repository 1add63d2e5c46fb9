"""From decoded images to model inputs, the same way everywhere: :class:`Preprocessing`.

A run's ``lungs`` and ``intensity`` settings (``config.json``) decide what its model sees;
training, ``predict``, ``evaluate``, ``serve`` and the exported model's predictor all call
:meth:`Preprocessing.apply` with images decoded at :attr:`Preprocessing.decode_side`::

    prep = Preprocessing.from_config(config)
    inputs = prep.apply(images, digests)      # images decoded at prep.decode_side
    inputs.images                              # (n, size, size, 1) uint8, what the model takes
    inputs.lungs, inputs.quality, inputs.boxes # the lung masks in the inputs' pixels, their flags, the crops

With ``lungs`` ``crop`` or ``mask`` every image is segmented by the run's lung segmenter (masks
cached by pixel digest); an image whose mask is flagged (:data:`covidxray.inference.lungs.QUALITY`)
is used whole, and listed in :attr:`ModelInputs.fallback`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from covidxray.data.lungviews import FULL, decode_side, harmonise, lung_view
from covidxray.errors import CovidXrayError
from covidxray.inference.lungs import OK


@dataclass
class ModelInputs:
    """Model inputs and, where segmented, their lungs."""

    images: np.ndarray  # (n, size, size, 1) uint8
    lungs: np.ndarray | None = None  # (n, size, size) bool: lung masks in the inputs' pixels
    quality: list[str] | None = None  # per image, the mask's flag ("ok", "no-lung", ...)
    boxes: np.ndarray | None = None  # (n, 4): the part of each image shown, as fractions (x0, y0, x1, y1)

    @property
    def fallback(self) -> list[int]:
        """Rows whose lungs were not found reliably (flagged): used whole, not cropped or masked."""
        return [] if self.quality is None else [i for i, q in enumerate(self.quality) if q != OK]


@dataclass
class Preprocessing:
    """What a run's model sees: ``size`` pixels a side, the lungs (``none``, ``crop``, ``mask``)
    and intensity harmonisation (``none``, ``equalize``, ``clahe``)."""

    size: int
    lungs: str = "none"
    intensity: str = "none"
    segmenter_path: str | None = None  # a lung segmenter folder or preset:NAME; None: the shipped one
    cache_dir: str | None = None
    _segmenter: object = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, config, cache_dir: str | None = None) -> Preprocessing:
        return cls(int(config.image_size), config.lungs, config.intensity, config.lung_segmenter,
                   cache_dir if cache_dir is not None else config.cache_dir)

    @property
    def decode_side(self) -> int:
        """The side images must be decoded at for :meth:`apply`."""
        return decode_side(self.size, self.lungs)

    @property
    def segmenter(self):
        """The lung segmenter, loaded on first use."""
        if self._segmenter is None:
            from covidxray.inference.lungs import load_segmenter

            self._segmenter = load_segmenter(self.segmenter_path)
        return self._segmenter

    def segment(self, images, digests=None, *, progress: bool | None = None) -> list:
        """Lung masks (:class:`~covidxray.inference.lungs.LungMask`) of decoded images, cached by digest."""
        digests = [None] * len(images) if digests is None else list(digests)
        return self.segmenter.segment_cached(images, digests, cache_dir=self.cache_dir, progress=progress)

    def apply(self, images, digests=None, *, lungs: bool = False, progress: bool | None = None) -> ModelInputs:
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
        if self.lungs == "none" and not lungs:
            return ModelInputs(harmonise(images, self.intensity)[..., None])
        masks = self.segment(images, digests, progress=progress)
        views = np.empty((len(images), self.size, self.size), np.uint8)
        view_masks = np.zeros((len(images), self.size, self.size), bool)
        boxes = np.tile(np.asarray(FULL), (len(images), 1))
        for i, (image, found) in enumerate(zip(images, masks)):
            mode = self.lungs if found.quality == OK else "none"  # flagged: the whole image
            views[i], view_masks[i], boxes[i] = lung_view(image, found.mask, mode, self.size)
        return ModelInputs(harmonise(views, self.intensity)[..., None], view_masks, [m.quality for m in masks], boxes)

    def describe(self) -> str:
        """The preprocessing in words, for reports and cards."""
        parts = {"none": "the whole image", "crop": "cropped to the box around both lungs (plus a margin)",
                 "mask": "zero outside the lungs"}[self.lungs]
        if self.intensity != "none":
            parts += {"equalize": ", histogram-equalised", "clahe": ", contrast-limited adaptive histogram "
                      "equalisation (CLAHE)"}[self.intensity]
        return parts
