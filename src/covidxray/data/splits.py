"""Train / validation / test splits: stratified by label, grouped by patient.

Images of one patient, and images with identical pixels, always land in the same split.
Without patient ids each image is its own group, and one patient's images may land in two
splits; :func:`split_dataset` logs a warning saying so.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from covidxray.errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def without_patient_id(frame: pd.DataFrame) -> pd.Series:
    """True for the rows whose patient is unknown (an empty or missing ``patient_id``)."""
    return ~frame["patient_id"].fillna("").astype(str).astype(bool)


def split_groups(frame: pd.DataFrame, pixel_digests: list[str | None] | None = None) -> np.ndarray:
    """Group ids: one per patient (kept apart by source), merged across identical pixels."""
    n = len(frame)
    patients = frame["patient_id"].fillna("").astype(str).to_numpy()
    sources = frame["source"].fillna("").astype(str).to_numpy()
    keys = [("patient", s, p) if p else ("image", i) for i, (s, p) in enumerate(zip(sources, patients, strict=True))]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[tuple, int] = {}
    for i, key in enumerate(keys):
        parent[find(i)] = find(first_of.setdefault(key, i))
    for i, digest in enumerate(pixel_digests or []):
        if digest is not None:
            parent[find(i)] = find(first_of.setdefault(("pixels", digest), i))
    return np.array([find(i) for i in range(n)])


def split_dataset(
    frame: pd.DataFrame,
    *,
    pixel_digests: list[str | None] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> pd.Series:
    """Assign each row to train, validation or test; returns a Series aligned with ``frame``."""
    unknown = without_patient_id(frame)
    if unknown.all():
        log.warning("no patient ids in the data: one patient's images may land in two splits, "
                    "which inflates test accuracy; add a patient_id column to a manifest to group them")
    elif unknown.any():
        counts = frame.loc[unknown, "label"].value_counts()
        log.warning("%d images have no patient id (%s): each is split on its own, so one patient's "
                    "images may land in two splits", int(unknown.sum()),
                    ", ".join(f"{label} {n}" for label, n in counts.items()))
    groups = split_groups(frame, pixel_digests)
    labels = frame["label"].to_numpy()
    _check_enough_groups(labels, groups)
    split = np.full(len(frame), "train", dtype=object)
    test = _first_fold(labels, groups, round(1 / test_fraction), seed)
    split[test] = "test"
    rest = np.flatnonzero(~test)
    val = _first_fold(labels[rest], groups[rest], round((1 - test_fraction) / val_fraction), seed + 1)
    split[rest[val]] = "validation"
    for name in SPLITS:
        present = set(labels[split == name])
        for label in sorted(set(labels) - present):
            raise DatasetError(
                f"class {label!r} has too few patients for a {name} split; add images of it "
                "or raise --test-fraction/--val-fraction"
            )
    return pd.Series(split, index=frame.index, name="split")


def _first_fold(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Hold out one of ``n_splits`` stratified, grouped folds (fewer folds for a small class)."""
    smallest = min(len(np.unique(groups[labels == label])) for label in np.unique(labels))
    if smallest < n_splits:
        log.info("a class has only %d patients: holding out 1/%d instead of 1/%d", smallest,
                 max(2, smallest), n_splits)
    n_splits = max(2, min(n_splits, smallest))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held_out = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held_out] = True
    return mask


def _check_enough_groups(labels: np.ndarray, groups: np.ndarray) -> None:
    for label in np.unique(labels):
        count = len(np.unique(groups[labels == label]))
        if count < len(SPLITS):
            raise DatasetError(
                f"class {label!r} has {int((labels == label).sum())} image(s) from {count} patient(s); "
                f"a train/validation/test split needs at least {len(SPLITS)} patients per class; add images"
            )
