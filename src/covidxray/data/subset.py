"""A smaller copy of a dataset, as a manifest: for quick trials (the notebook, smoke tests).

``write_subset("../shared/data/darkcovidnet", "small.csv", per_class=40)`` lists at most 40
images of each class, chosen at random with a seed, with their labels, patient ids and sources;
``covidxray train --data small.csv`` then trains on them. No image is copied.
"""

from __future__ import annotations

from pathlib import Path

from covidxray.data.sources import load_dataset
from covidxray.errors import DatasetError
from covidxray.files import atomic_write_text

SUBSET_COLUMNS = ["path", "label", "patient_id", "source"]


def write_subset(data: str | Path, out_csv: str | Path, per_class: int, seed: int = 0) -> Path:
    """Write a manifest of at most ``per_class`` images per class of ``data``; returns its path.

    Paths are absolute, so the manifest may live anywhere.
    """
    if per_class < 1:
        raise DatasetError(f"per_class must be at least 1 (got {per_class})")
    table = load_dataset(data)
    chosen = table.sample(frac=1.0, random_state=seed).groupby("label", sort=True).head(per_class)
    chosen = chosen.sort_values(["label", "path"])[SUBSET_COLUMNS]
    out_csv = Path(out_csv)
    atomic_write_text(out_csv, chosen.to_csv(index=False))
    return out_csv
