"""A smaller copy of a dataset, as a manifest: for quick trials (the notebook, smoke tests), and a
dataset with nothing of another in it (pretraining data that shares no image with a test set).

``write_subset("../shared/data/darkcovidnet", "small.csv", per_class=40)`` lists at most 40
images of each class, chosen at random with a seed, with their labels, patient ids and sources;
``covidxray train --data small.csv`` then trains on them. No image is copied.

``write_subset("../shared/data/radiography-db", "rdb.csv", exclude=["../shared/data/darkcovidnet"])``
lists every image of radiography-db but those that are also in darkcovidnet: the same original
file name (where a manifest or metadata gives one), identical pixels or a near-duplicate
(:mod:`covidxray.data.duplicates`: resized, re-encoded or re-cropped copies of one film).
"""

from __future__ import annotations

import logging
from pathlib import Path

from covidxray.data.duplicates import same_images
from covidxray.data.sources import as_paths, load_dataset, load_datasets
from covidxray.errors import DatasetError
from covidxray.files import atomic_write_text

log = logging.getLogger(__name__)

SUBSET_COLUMNS = ["path", "label", "patient_id", "source"]


def write_subset(data: str | Path, out_csv: str | Path, per_class: int | None = None, seed: int = 0, *,
                 exclude=None, cache_dir=None) -> Path:
    """Write a manifest of at most ``per_class`` images per class of ``data`` (None: all); returns its path.

    ``exclude``: datasets whose images are left out of ``data`` first
    (:func:`~covidxray.data.duplicates.same_images`).
    Paths are absolute, so the manifest may live anywhere.
    """
    if per_class is not None and per_class < 1:
        raise DatasetError(f"per_class must be at least 1 (got {per_class})")
    table = load_dataset(data)
    if exclude:
        shared, _ = same_images(table, load_datasets(exclude), cache_dir)
        log.info("left out %d of the %d images of %s that are also in %s", int(shared.sum()), len(table), data,
                 ", ".join(as_paths(exclude)))
        table = table[~shared]
        if table.empty:
            raise DatasetError(f"{data}: every image is also in {', '.join(as_paths(exclude))}; nothing is left")
    chosen = readable_sample(table.sample(frac=1.0, random_state=seed), per_class, data, cache_dir=cache_dir)
    chosen = chosen.sort_values(["label", "path"])[SUBSET_COLUMNS]
    out_csv = Path(out_csv)
    atomic_write_text(out_csv, chosen.to_csv(index=False))
    return out_csv


def readable_sample(shuffled, per_class: int | None, data, *, cache_dir=None):
    """The first ``per_class`` rows of each class of ``shuffled`` (None: all) whose image decodes: a
    manifest lists only images that train. Those that do not are left out with a warning naming
    them, and the next rows of their class drawn instead; none at all is a :class:`DatasetError`.
    Decoding goes through the image cache at the fingerprint size, which ``--exclude`` has filled."""
    import pandas as pd

    from covidxray.data.cache import ImageCache
    from covidxray.data.duplicates import FINGERPRINT_SIDE

    cache, kept, failed = ImageCache(cache_dir), [], {}
    pending = shuffled
    while not pending.empty:
        if per_class is None:
            batch = pending
        else:
            have = pd.concat(kept)["label"].value_counts().to_dict() if kept else {}
            room = per_class - pending["label"].map(have).fillna(0).astype(int)
            batch = pending[pending.groupby("label").cumcount() < room]
        if batch.empty:
            break
        decoded = cache.load([str(p) for p in batch["path"]], FINGERPRINT_SIDE)
        failed.update(decoded.failed)
        kept.append(batch[decoded.ok])
        pending = pending.drop(batch.index)
    chosen = pd.concat(kept) if kept else shuffled.iloc[:0]
    first = next(iter(failed.values()), "")
    if failed:
        log.warning("left out %d image(s) that cannot be read, e.g. %s", len(failed), first)
    if chosen.empty:
        raise DatasetError(f"{data}: none of its {len(shuffled)} image(s) can be read (e.g. {first}); "
                           "nothing to list")
    return chosen
