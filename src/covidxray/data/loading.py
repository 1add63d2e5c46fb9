"""From dataset paths to labelled, decoded images: the table, the pixel arrays and the targets."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from covidxray.data.cache import ImageCache
from covidxray.data.shards import load_shards, shard_image_size
from covidxray.data.sources import as_paths, load_datasets, select_task
from covidxray.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class LabelledImages:
    """Decoded images aligned row for row with their table."""

    table: pd.DataFrame  # sources.COLUMNS, plus "pixels" (a digest of the decoded pixels)
    images: np.ndarray  # (n, size, size, 1) uint8 (a lazy ShardArray for a shard folder)
    targets: np.ndarray  # (n,) class indices into classes
    classes: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it was left out
    lungs: np.ndarray | None = None  # (n, size, size) bool: lung masks in the images' pixels, where segmented
    lung_quality: list[str] | None = None  # per image, the lung mask's flag ("ok", "no-lung", ...)

    def subset(self, mask: np.ndarray) -> LabelledImages:
        quality = None if self.lung_quality is None else [q for q, k in zip(self.lung_quality, mask) if k]
        return LabelledImages(self.table[mask].reset_index(drop=True), self.images[mask], self.targets[mask],
                              self.classes, self.skipped, None if self.lungs is None else self.lungs[mask], quality)


def load_labelled_images(data, classes: tuple[str, ...], size: int, *, cache_dir=None, require_all: bool = True) -> LabelledImages:
    """Read one or several datasets and decode their images; undecodable files are left out, named.

    An image with the same pixels as one of an earlier dataset is counted once. A shard folder
    (``covidxray data shard``) is read lazily: ``images`` is then a :class:`ShardArray`.
    """
    if shard_image_size(data) is not None:
        return load_labelled_shards(as_paths(data)[0], classes, size, require_all=require_all)
    where = ", ".join(as_paths(data))
    table = select_task(load_datasets(data), classes, where=where, require_all=require_all)
    decoded = ImageCache(cache_dir).load(list(table["path"]), size)
    for message in decoded.failed.values():
        log.warning("skipped %s", message)
    keep = decoded.ok
    if not keep.any():
        raise DatasetError(f"{where}: none of the {len(table)} images could be decoded")
    table = table.assign(pixels=[d or "" for d in decoded.pixel_digests])
    keep &= ~_repeated_across_datasets(table)
    table, images = table[keep].reset_index(drop=True), decoded.images[keep]
    near = NearDuplicates.find(table, cache_dir=cache_dir)
    skipped = {**decoded.failed, **near.dropped}
    table = table.assign(near_duplicates=near.groups)[near.keep].reset_index(drop=True)
    targets = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return LabelledImages(table, images[near.keep][..., None], targets, tuple(classes), skipped)


@dataclass
class NearDuplicates:
    """What :func:`load_labelled_images` does with near-duplicate images (:mod:`covidxray.data.duplicates`).

    A near-duplicate of an image of an earlier dataset, with the same label, is counted once (the
    earlier copy kept). Near-duplicates whose labels disagree are all left out, and named: which
    label is right cannot be told. Near-duplicates within one dataset with one label stay, and
    share a ``near_duplicates`` group, so that no split or fold separates them.
    """

    keep: np.ndarray  # (n,) bool
    groups: list[str]  # per row: "" or the group's name, shared by its near-duplicates
    dropped: dict[str, str]  # path -> why it was left out
    pairs: pd.DataFrame  # duplicates.PAIR_COLUMNS over the table's rows

    @classmethod
    def find(cls, table: pd.DataFrame, *, cache_dir=None) -> NearDuplicates:
        from covidxray.data.duplicates import fingerprint_files, near_duplicate_pairs

        prints, ok, _ = fingerprint_files(list(table["path"]), cache_dir)
        pairs = near_duplicate_pairs(prints)
        both = ok[pairs["a"].to_numpy()] & ok[pairs["b"].to_numpy()]  # a file changed since: its zeros pair nothing
        return cls.from_pairs(table, pairs[both].reset_index(drop=True))

    @classmethod
    def from_pairs(cls, table: pd.DataFrame, pairs: pd.DataFrame) -> NearDuplicates:
        from covidxray.data.duplicates import duplicate_groups

        n = len(table)
        keep, dropped = np.ones(n, dtype=bool), {}
        if not len(pairs):
            return cls(keep, [""] * n, dropped, pairs)
        group = duplicate_groups(n, pairs)
        labels, datasets, paths = (table[c].to_numpy() for c in ("label", "dataset", "path"))
        order = {d: k for k, d in enumerate(dict.fromkeys(datasets))}
        sizes = np.bincount(group)
        for g in np.flatnonzero(sizes > 1):
            members = np.flatnonzero(group == g)
            if len(set(labels[members])) > 1:
                shown = ", ".join(f"{paths[m]} ({labels[m]})" for m in members)
                for m in members:
                    keep[m] = False
                    dropped[paths[m]] = (f"{paths[m]}: a near-duplicate of an image with another label ({shown}); "
                                         "left out, since which label is right cannot be told")
                continue
            first = min(order[datasets[m]] for m in members)
            for m in members:
                if order[datasets[m]] != first:
                    keep[m] = False
                    twin = next(o for o in members if order[datasets[o]] == first)
                    dropped[paths[m]] = f"{paths[m]}: a near-duplicate of {paths[twin]} (an earlier dataset); counted once"
        conflicts = sum("another label" in why for why in dropped.values())
        if dropped:
            log.info("%d near-duplicate images counted once, %d left out for a label conflict",
                     len(dropped) - conflicts, conflicts)
        if conflicts:
            log.warning("%d images are near-duplicates of an image with another label; left out (covidxray data "
                        "audit names them)", conflicts)
        kept_sizes = np.bincount(group[keep], minlength=len(sizes))
        names = [f"near-{group[i]}" if keep[i] and kept_sizes[group[i]] > 1 else "" for i in range(n)]
        return cls(keep, names, dropped, pairs)


def load_labelled_shards(root: str, classes: tuple[str, ...], size: int, *, require_all: bool = True) -> LabelledImages:
    """:func:`load_labelled_images` for a shard folder, without reading any pixels."""
    table, images, skipped = load_shards(root)
    if images.shape[1] != size:
        raise DatasetError(f"{root}: the shards hold {images.shape[1]}px images, the model takes {size}px; "
                           f"shard the data again with --image-size {size}")
    table = select_task(table.assign(row=np.arange(len(table))), classes, where=root, require_all=require_all)
    images = images[table["row"].to_numpy()]
    targets = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return LabelledImages(table.drop(columns=["row", "shard", "offset"]), images, targets, tuple(classes), skipped)


def _repeated_across_datasets(table: pd.DataFrame) -> np.ndarray:
    """True for an image whose pixels, with the same label, already appeared in an earlier dataset of
    the table (a copy with another label is left to :class:`NearDuplicates`, which leaves both out)."""
    first = table.groupby("pixels")[["dataset", "label"]].transform("first")
    repeated = ((table["dataset"] != first["dataset"]) & (table["label"] == first["label"])
                & (table["pixels"] != "")).to_numpy()
    if repeated.any():
        log.info("%d images have the same pixels as an image of an earlier dataset; counted once", int(repeated.sum()))
    return repeated
