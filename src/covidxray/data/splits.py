"""Train / validation / test splits: stratified by label, grouped by patient.

Images of one patient, and images with identical pixels or near-duplicates (a ``near_duplicates``
group of :class:`~covidxray.data.loading.NearDuplicates`), always land in the same split. Without
patient ids each image is its own group, and one patient's images may land in two splits;
:func:`split_dataset` logs a warning saying so. The image-level protocol (``group_by="none"``)
keeps only copies of one image together: identical pixels and near-duplicates.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from covidxray.errors import DatasetError

if TYPE_CHECKING:
    import pandas as pd

# pandas and scikit-learn load when a split is made, not when this module is imported:
# covidxray.config reads GROUP_BY from here, and `covidxray --help` must stay fast.

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def run_splits(val_fraction: float) -> tuple[str, ...]:
    """The splits a run holds: :data:`SPLITS`, without validation where ``val_fraction`` is 0."""
    return SPLITS if val_fraction else tuple(name for name in SPLITS if name != "validation")


def without_patient_id(frame: pd.DataFrame) -> pd.Series:
    """True for the rows whose patient is unknown (an empty or missing ``patient_id``)."""
    return ~frame["patient_id"].fillna("").astype(str).astype(bool)


def split_groups(frame: pd.DataFrame, pixel_digests: list[str | None] | None = None, *,
                 by_patient: bool = True) -> np.ndarray:
    """Group ids: one per patient (kept apart by source; each image its own without ``by_patient``),
    merged across identical pixels and near-duplicate groups."""
    n = len(frame)
    patients = frame["patient_id"].fillna("").astype(str).to_numpy() if by_patient else np.full(n, "")
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
        if digest:
            parent[find(i)] = find(first_of.setdefault(("pixels", digest), i))
    near = frame["near_duplicates"].fillna("").astype(str) if "near_duplicates" in frame else ()
    for i, name in enumerate(near):
        if name:
            parent[find(i)] = find(first_of.setdefault(("near", name), i))
    return np.array([find(i) for i in range(n)])


#: patient: no patient in two splits; none: image-level; source: leave-one-source-out (cross-validation).
GROUP_BY = ("patient", "none", "source")


def split_dataset(
    frame: pd.DataFrame,
    *,
    pixel_digests: list[str | None] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    test_mask: np.ndarray | None = None,
    group_by: str = "patient",
) -> pd.Series:
    """Assign each row to train, validation or test; returns a Series aligned with ``frame``.

    ``test_mask``: the test rows are given (a cross-validation fold); validation is then drawn
    from the other rows (``val_fraction=0``: no validation split). ``group_by="none"``: every
    image on its own (the image-level protocol of most published results; one patient's images
    may land in two splits).
    """
    if group_by == "source" and test_mask is None:
        raise DatasetError("--group-by source holds out whole sources, one per fold: it is for covidxray cv "
                           "(covidxray cv --group-by source); train splits by patient or image")
    groups = _groups(frame, pixel_digests, group_by, warn=test_mask is None)
    labels = frame["label"].to_numpy()
    if test_mask is None:
        _check_enough_groups(labels, groups)
    split = np.full(len(frame), "train", dtype=object)
    test = _first_fold(labels, groups, round(1 / test_fraction), seed) if test_mask is None else np.asarray(test_mask)
    split[test] = "test"
    rest = np.flatnonzero(~test)
    held_out = test_fraction if test_mask is None else float(np.mean(test))
    if val_fraction:
        val = _first_fold(labels[rest], groups[rest], max(2, round((1 - held_out) / val_fraction)), seed + 1)
        split[rest[val]] = "validation"
    needed = run_splits(val_fraction)
    for name in needed if test_mask is None else [n for n in needed if n != "test"]:  # a held-out fold is what it is
        present = set(labels[split == name])
        for label in sorted(set(labels) - present):
            raise DatasetError(
                f"class {label!r} has too few patients for a {name} split; add images of it "
                "or raise --test-fraction/--val-fraction"
            )
    import pandas as pd

    return pd.Series(split, index=frame.index, name="split")


def assign_folds(frame: pd.DataFrame, folds: int, *, pixel_digests: list[str | None] | None = None,
                 group_by: str = "patient", seed: int = 0) -> np.ndarray:
    """Fold index (0 .. folds-1) per row: stratified by label, grouped by patient unless ``group_by="none"``.

    ``group_by="source"``: one fold per source (``folds`` is then ignored; see :func:`source_folds`).
    """
    if group_by == "source":
        return source_folds(frame)[0]
    labels = frame["label"].to_numpy()
    classes = np.unique(labels)
    if len(classes) < 2:
        raise DatasetError(f"cross-validation needs two or more classes; the data holds only {classes[0]!r}")
    if folds < 2:
        raise DatasetError(f"--folds must be at least 2; got {folds}")
    groups = _groups(frame, pixel_digests, group_by)
    unit = "patients" if group_by == "patient" else "images"
    for label in classes:
        count = len(np.unique(groups[labels == label]))
        if count < folds:
            raise DatasetError(
                f"class {label!r} has {count} {unit}, fewer than --folds {folds}: each fold needs one of every "
                f"class; use --folds {count} or fewer, or add images"
            )
    from sklearn.model_selection import StratifiedGroupKFold

    fold_of = np.zeros(len(frame), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(frame)), labels, groups)):
        fold_of[held_out] = k
    return fold_of


def source_folds(frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Leave-one-source-out: the fold of each row (the index of its source) and the sources in fold order.

    Raises where a fold could not train: fewer than two sources, or a source whose absence leaves
    a class with no image to train on. Near-duplicates across sources are the datasets' own
    business: :class:`~covidxray.data.loading.NearDuplicates` counts each once when they are combined.
    """
    sources = frame["source"].fillna("").astype(str).replace("", "unknown").to_numpy()
    names = sorted(set(sources))
    if len(names) < 2:
        raise DatasetError(f"--group-by source needs images from two or more sources; the data has one "
                           f"({names[0]!r}): combine datasets (--data A --data B) or add a source column to the manifest")
    labels = frame["label"].to_numpy()
    for name in names:
        missing = sorted(set(labels) - set(labels[sources != name]))
        if missing:
            raise DatasetError(
                f"holding out the source {name!r} leaves no {', '.join(map(repr, missing))} image to train on: "
                f"every such image comes from {name!r}; add a dataset where {missing[0]!r} comes from another source")
    return np.array([names.index(s) for s in sources]), names


def _groups(frame: pd.DataFrame, pixel_digests, group_by: str, warn: bool = True) -> np.ndarray:
    if group_by not in GROUP_BY:
        raise DatasetError(f"--group-by must be one of {', '.join(GROUP_BY)}; got {group_by!r}")
    if group_by == "none":
        if warn:
            log.warning("image-level split (--group-by none): one patient's images may land in two splits, "
                        "which inflates test accuracy")
        return split_groups(frame, pixel_digests, by_patient=False)
    if warn:
        _warn_missing_patients(frame)
    return split_groups(frame, pixel_digests)  # "source": a fold's validation is drawn by patient


def _warn_missing_patients(frame: pd.DataFrame) -> None:
    unknown = without_patient_id(frame)
    if unknown.all():
        log.warning("no patient ids in the data: one patient's images may land in two splits, "
                    "which inflates test accuracy; add a patient_id column to a manifest to group them")
    elif unknown.any():
        counts = frame.loc[unknown, "label"].value_counts()
        log.warning("%d images have no patient id (%s): each is split on its own, so one patient's "
                    "images may land in two splits", int(unknown.sum()),
                    ", ".join(f"{label} {n}" for label, n in counts.items()))


def _first_fold(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Hold out one of ``n_splits`` stratified, grouped folds (fewer folds for a small class)."""
    smallest = min(len(np.unique(groups[labels == label])) for label in np.unique(labels))
    if smallest < n_splits:
        log.info("a class has only %d patients: holding out 1/%d instead of 1/%d", smallest,
                 max(2, smallest), n_splits)
    n_splits = max(2, min(n_splits, smallest))
    from sklearn.model_selection import StratifiedGroupKFold

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
