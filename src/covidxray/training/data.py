"""The data of a training run: read, decoded, optionally blanked, and split into train / validation / test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from covidxray.config import TrainConfig
from covidxray.data.blanking import DEFAULT_FRACTION, blank_center, center_mask
from covidxray.data.loading import LabelledImages, load_labelled_images
from covidxray.data.lungviews import blank_regions
from covidxray.data.splits import split_dataset
from covidxray.errors import CovidXrayError
from covidxray.inference.lungs import OK
from covidxray.inference.preprocess import Preprocessing


@dataclass
class PreparedData:
    """A labelled, decoded and split dataset, ready for ``model.fit``."""

    table: pd.DataFrame  # path, label, patient_id, source, ..., pixels, split
    images: np.ndarray  # (n, size, size, 1) uint8, row i is table row i (a lazy ShardArray for shards)
    targets: np.ndarray  # (n,) class indices into classes
    classes: tuple[str, ...]
    skipped: dict[str, str]  # path -> why it was left out
    lungs: np.ndarray | None = None  # (n, size, size) bool lung masks in the images' pixels, where segmented
    lung_quality: list[str] | None = None  # per image, the lung mask's flag

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.mask(split)
        return self.images[mask], self.targets[mask]

    def mask(self, split: str) -> np.ndarray:
        return (self.table["split"] == split).to_numpy()


def load_data(config: TrainConfig, cache_dir: str | None = None) -> LabelledImages:
    """Read and decode the data of ``config`` (resolved; decoded images cached in ``cache_dir``, default
    ``~/.cache/covidxray``) and make the model's inputs
    (:class:`~covidxray.inference.preprocess.Preprocessing`: the lungs cropped); with a
    probe's blanking, hide the lung field (a central box, or the segmented lungs) or everything but
    the lungs."""
    prep = Preprocessing.from_config(config, cache_dir)
    data = load_labelled_images(config.data, config.classes, prep.decode_side, cache_dir=cache_dir)
    in_memory = isinstance(data.images, np.ndarray)
    if not in_memory and (prep.segments or config.blanking):
        raise CovidXrayError("--lungs and the probe's blanking need the images in memory; train on the image "
                             "files, not a shard folder")
    if in_memory:  # the lungs of every image: for --lungs, the lung probes and heat-in-lungs
        inputs = prep.apply(data.images, list(data.table["pixels"]), lungs=True)
        data.images, data.lungs, data.lung_quality = inputs.images, inputs.lungs, inputs.quality
    if config.blanking == "box":
        data.images = blank_center(data.images, config.blank_fraction)
    elif config.blanking:
        data.images = blank_lungs(data, config.blanking)
    return data


def blank_lungs(data: LabelledImages, region: str) -> np.ndarray:
    """The images with their lungs (``region="lungs"``) or all but them (``"outside-lungs"``) blanked.

    An image whose lungs were not found reliably (a flagged mask) stands in with the central box
    (:data:`DEFAULT_FRACTION` of the side): blanked, or the only part kept."""
    masks = data.lungs.copy()
    masks[np.array([q != OK for q in data.lung_quality], bool)] = center_mask(*masks.shape[1:], DEFAULT_FRACTION)
    return blank_regions(data.images, masks, region)


def split_data(config: TrainConfig, data: LabelledImages, test_mask: np.ndarray | None = None) -> PreparedData:
    """Assign train / validation / test (``test_mask``: the test rows are given, as in cross-validation)."""
    table = data.table.copy()
    table["split"] = split_dataset(table, pixel_digests=list(table["pixels"]), val_fraction=config.val_fraction,
                                   test_fraction=config.test_fraction, seed=config.seed, test_mask=test_mask,
                                   group_by=config.group_by)
    return PreparedData(table, data.images, data.targets, config.classes, data.skipped, data.lungs,
                        data.lung_quality)


def prepare_data(config: TrainConfig, cache_dir: str | None = None) -> PreparedData:
    """Read, decode and split the data of ``config`` (resolved); ``cache_dir`` as for :func:`load_data`."""
    return split_data(config, load_data(config, cache_dir))
