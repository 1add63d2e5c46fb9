"""The data of a training run: read, decoded, optionally blanked, and split into train / validation / test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from covidxray.config import TrainConfig
from covidxray.data.blanking import blank_center
from covidxray.data.loading import LabelledImages, load_labelled_images
from covidxray.data.splits import split_dataset
from covidxray.errors import CovidXrayError


@dataclass
class PreparedData:
    """A labelled, decoded and split dataset, ready for ``model.fit``."""

    table: pd.DataFrame  # path, label, patient_id, source, ..., pixels, split
    images: np.ndarray  # (n, size, size, 1) uint8, row i is table row i (a lazy ShardArray for shards)
    targets: np.ndarray  # (n,) class indices into classes
    classes: tuple[str, ...]
    skipped: dict[str, str]  # path -> why it was left out

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.mask(split)
        return self.images[mask], self.targets[mask]

    def mask(self, split: str) -> np.ndarray:
        return (self.table["split"] == split).to_numpy()


def load_data(config: TrainConfig, progress: bool | None = None) -> LabelledImages:
    """Read and decode the data of ``config`` (resolved); with ``blank_fraction``, hide the lung field."""
    data = load_labelled_images(config.data, config.classes, config.image_size, cache_dir=config.cache_dir,
                                progress=progress)
    if config.blank_fraction:
        if not isinstance(data.images, np.ndarray):
            raise CovidXrayError("--blank-fraction needs the images in memory; train on the image files, "
                                 "not a shard folder")
        data.images = blank_center(data.images, config.blank_fraction)
    return data


def split_data(config: TrainConfig, data: LabelledImages, test_mask: np.ndarray | None = None) -> PreparedData:
    """Assign train / validation / test (``test_mask``: the test rows are given, as in cross-validation)."""
    table = data.table.copy()
    table["split"] = split_dataset(table, pixel_digests=list(table["pixels"]), val_fraction=config.val_fraction,
                                   test_fraction=config.test_fraction, seed=config.seed, test_mask=test_mask,
                                   group_by=config.group_by)
    return PreparedData(table, data.images, data.targets, config.classes, data.skipped)


def prepare_data(config: TrainConfig, progress: bool | None = None) -> PreparedData:
    """Read, decode and split the data of ``config`` (resolved)."""
    return split_data(config, load_data(config, progress))
