"""Tests for covidxray.data.splits: stratified, patient-grouped train/validation/test splits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidxray.data.sources import load_dataset
from covidxray.data.splits import SPLITS, split_dataset, split_groups
from covidxray.errors import DatasetError
from helpers import shared_data_dir


@pytest.fixture
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture
def darkcovidnet(shared_data) -> pd.DataFrame:
    return load_dataset(shared_data / "darkcovidnet")


def _frame(labels, patients=None, sources=None) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({
        "path": [f"/x/{i}.png" for i in range(n)],
        "label": list(labels),
        "patient_id": list(patients) if patients is not None else [""] * n,
        "source": list(sources) if sources is not None else ["s"] * n,
        "original_label": list(labels),
    })


# --- real data -------------------------------------------------------------------------------


def test_real_split_keeps_patients_apart(darkcovidnet):
    split = split_dataset(darkcovidnet, seed=0)
    assert split.index.equals(darkcovidnet.index)
    assert set(split) == set(SPLITS)
    splits_of_patient = darkcovidnet.assign(split=split).groupby("patient_id")["split"].nunique()
    assert splits_of_patient.max() == 1, splits_of_patient[splits_of_patient > 1].index.tolist()[:5]


def test_real_split_holds_every_class_in_near_70_15_15(darkcovidnet):
    split = split_dataset(darkcovidnet, seed=0)
    table = pd.crosstab(darkcovidnet["label"], split)
    assert (table[list(SPLITS)] > 0).all().all(), table
    fractions = split.value_counts(normalize=True)
    assert abs(fractions["train"] - 0.70) < 0.04, fractions
    assert abs(fractions["validation"] - 0.15) < 0.03, fractions
    assert abs(fractions["test"] - 0.15) < 0.03, fractions
    # stratified: each class is split in about the same proportions
    per_class = table.div(table.sum(axis=1), axis=0)
    assert (per_class["test"] - 0.15).abs().max() < 0.06, per_class


def test_real_split_is_deterministic_per_seed(darkcovidnet):
    first = split_dataset(darkcovidnet, seed=3)
    again = split_dataset(darkcovidnet, seed=3)
    other = split_dataset(darkcovidnet, seed=4)
    assert first.equals(again)
    assert not first.equals(other)
    assert (first != other).sum() > 50


# --- synthetic -------------------------------------------------------------------------------


def _balanced(n_per_class: int = 10) -> pd.DataFrame:
    labels = ["covid"] * n_per_class + ["normal"] * n_per_class
    return _frame(labels, patients=[f"p{i}" for i in range(len(labels))])


def test_identical_pixels_land_in_one_split_whatever_the_patient_ids():
    frame = _balanced(10)
    digests = [f"d{i}" for i in range(len(frame))]
    # the same picture filed under three patient ids (a duplicate across sources, say)
    for i in (0, 3, 7):
        digests[i] = "same"
    groups = split_groups(frame, digests)
    assert groups[0] == groups[3] == groups[7]
    assert len(set(groups)) == len(frame) - 2
    for seed in range(6):
        split = split_dataset(frame, pixel_digests=digests, seed=seed)
        assert split[0] == split[3] == split[7], (seed, split.tolist())


def test_identical_pixels_join_whole_patient_groups():
    frame = _frame(["covid"] * 4, patients=["a", "a", "b", "c"])
    groups = split_groups(frame, [None, "x", "x", None])  # a's second image equals b's image
    assert groups[0] == groups[1] == groups[2]
    assert groups[3] != groups[0]


def test_patients_are_kept_apart_by_source():
    frame = _frame(["covid"] * 3, patients=["1", "1", "1"], sources=["nih", "nih", "ieee8023"])
    groups = split_groups(frame)
    assert groups[0] == groups[1]
    assert groups[2] != groups[0]


def test_rows_without_patient_are_their_own_group():
    frame = _frame(["covid"] * 3)
    assert len(set(split_groups(frame))) == 3


def test_synthetic_split_keeps_patients_together():
    rng = np.random.default_rng(0)
    labels, patients = [], []
    for label in ("covid", "normal", "pneumonia"):
        for p in range(12):
            for _ in range(int(rng.integers(1, 4))):
                labels.append(label)
                patients.append(f"{label}-{p}")
    frame = _frame(labels, patients=patients)
    split = split_dataset(frame, seed=1)
    assert frame.assign(split=split).groupby("patient_id")["split"].nunique().max() == 1
    assert (pd.crosstab(frame["label"], split)[list(SPLITS)] > 0).all().all()


def test_class_with_one_image_raises_naming_it():
    frame = _frame(["normal"] * 10 + ["covid"], patients=[f"p{i}" for i in range(11)])
    with pytest.raises(DatasetError) as raised:
        split_dataset(frame)
    message = str(raised.value)
    assert "'covid'" in message
    assert "1 image(s) from 1 patient(s)" in message


def test_class_with_two_patients_raises_naming_it():
    patients = [f"n{i}" for i in range(10)] + ["c1", "c1", "c2", "c2", "c2"]
    frame = _frame(["normal"] * 10 + ["covid"] * 5, patients=patients)
    with pytest.raises(DatasetError) as raised:
        split_dataset(frame)
    message = str(raised.value)
    assert "'covid'" in message
    assert "2 patient(s)" in message
    assert "'normal'" not in message


def test_no_patient_ids_logs_a_warning(caplog):
    frame = _frame(["covid"] * 10 + ["normal"] * 10)
    with caplog.at_level(logging.WARNING, logger="covidxray.data.splits"):
        split = split_dataset(frame)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "expected a warning about missing patient ids"
    assert any("patient" in r.getMessage() for r in warnings)
    assert set(split) == set(SPLITS)


def test_patient_ids_present_logs_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="covidxray.data.splits"):
        split_dataset(_balanced(10))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_some_missing_patient_ids_are_counted_by_class(caplog):
    labels = ["covid"] * 10 + ["normal"] * 10
    patients = [""] * 4 + [f"c{i}" for i in range(6)] + [f"n{i}" for i in range(10)]
    with caplog.at_level(logging.WARNING, logger="covidxray.data.splits"):
        split_dataset(_frame(labels, patients))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1 and "4 images have no patient id (covid 4)" in messages[0]


# --- cross-validation folds -----------------------------------------------------------------------

from covidxray.data.splits import assign_folds  # noqa: E402


def test_folds_cover_every_image_once_and_keep_patients_together():
    labels = ["covid"] * 30 + ["normal"] * 60
    patients = [f"p{i // 3}" for i in range(90)]
    frame = _frame(labels, patients)
    folds = assign_folds(frame, 5, seed=0)
    assert set(folds) == set(range(5))
    for patient, rows in frame.groupby("patient_id").groups.items():
        assert len(set(folds[rows])) == 1, patient
    for k in range(5):  # stratified: every fold holds both classes
        assert set(frame["label"][folds == k]) == {"covid", "normal"}


def test_image_level_folds_split_patients():
    frame = _frame(["covid"] * 30 + ["normal"] * 30, [f"p{i // 3}" for i in range(60)])
    folds = assign_folds(frame, 5, group_by="none", seed=0)
    assert any(len(set(folds[rows])) > 1 for rows in frame.groupby("patient_id").groups.values())


def test_more_folds_than_a_class_has_patients_is_a_clear_error():
    frame = _frame(["covid"] * 6 + ["normal"] * 30, [f"c{i // 2}" for i in range(6)] + [f"n{i}" for i in range(30)])
    with pytest.raises(DatasetError, match=r"class 'covid' has 3 patients, fewer than --folds 5.*--folds 3 or fewer"):
        assign_folds(frame, 5)


def test_single_class_and_too_few_folds_are_clear_errors():
    with pytest.raises(DatasetError, match="two or more classes; the data holds only 'covid'"):
        assign_folds(_frame(["covid"] * 10, [f"p{i}" for i in range(10)]), 5)
    with pytest.raises(DatasetError, match="--folds must be at least 2"):
        assign_folds(_frame(["covid", "normal"] * 5, [f"p{i}" for i in range(10)]), 1)


def test_split_with_a_given_test_fold_draws_validation_from_the_rest():
    frame = _frame(["covid"] * 40 + ["normal"] * 40, [f"p{i // 2}" for i in range(80)])
    folds = assign_folds(frame, 4, seed=1)
    split = split_dataset(frame, test_mask=folds == 2, seed=1).to_numpy()
    assert np.array_equal(split == "test", folds == 2)
    assert (split == "validation").any() and not ((split == "validation") & (folds == 2)).any()
    validation_patients = set(frame["patient_id"][split == "validation"])
    assert not validation_patients & set(frame["patient_id"][split == "train"])


def test_no_validation_split_when_its_share_is_zero():
    frame = _frame(["covid"] * 40 + ["normal"] * 40, [f"p{i // 2}" for i in range(80)])
    split = split_dataset(frame, val_fraction=0.0, seed=1).to_numpy()
    assert set(split) == {"train", "test"}
    assert split_dataset(frame, val_fraction=0.0, seed=1).tolist() == split.tolist()
    with_validation = split_dataset(frame, seed=1).to_numpy()
    assert np.array_equal(split == "test", with_validation == "test")  # the same test split: validation is train
    assert np.array_equal(split == "train", with_validation != "test")
    folds = assign_folds(frame, 4, seed=1)
    in_fold = split_dataset(frame, test_mask=folds == 2, val_fraction=0.0, seed=1).to_numpy()
    assert np.array_equal(in_fold == "test", folds == 2) and np.array_equal(in_fold == "train", folds != 2)


# --- near-duplicates ------------------------------------------------------------------------------


def _with_near(frame: pd.DataFrame, groups: dict[str, list[int]]) -> pd.DataFrame:
    """The frame with a ``near_duplicates`` column: ``groups`` maps a name to its rows."""
    near = [""] * len(frame)
    for name, rows in groups.items():
        for row in rows:
            near[row] = name
    return frame.assign(near_duplicates=near)


def test_split_groups_merge_rows_sharing_a_near_duplicate_group():
    frame = _with_near(_frame(["covid"] * 6, patients=["a", "b", "c", "d", "e", "e"]),
                       {"near-1": [0, 3], "near-7": [2, 4]})
    groups = split_groups(frame)
    assert groups[0] == groups[3] and groups[2] == groups[4] == groups[5]  # e's second image joins through e
    assert len({groups[0], groups[1], groups[2]}) == 3
    assert len(set(groups)) == 3
    image_level = split_groups(frame, by_patient=False)
    assert image_level[0] == image_level[3] and image_level[2] == image_level[4]
    assert image_level[5] != image_level[4] and len(set(image_level)) == 4  # e's images apart at image level


def test_missing_or_empty_near_duplicate_values_join_nothing():
    frame = _frame(["covid"] * 4)
    assert len(set(split_groups(frame.assign(near_duplicates=["", None, "", np.nan])))) == 4
    assert len(set(split_groups(frame))) == 4  # no column at all


@pytest.mark.parametrize("group_by", ["patient", "none"])
def test_near_duplicates_land_in_one_split_and_one_fold(group_by):
    labels = ["covid"] * 30 + ["normal"] * 30
    frame = _with_near(_frame(labels, patients=[f"p{i}" for i in range(60)]),
                       {"near-a": [0, 1, 2], "near-b": [5, 40], "near-c": [31, 59]})
    digests = [f"d{i}" for i in range(60)]
    digests[10] = digests[50] = "same"  # identical pixels, filed under two patients and two labels
    for seed in range(6):
        split = split_dataset(frame, pixel_digests=digests, group_by=group_by, seed=seed).to_numpy()
        folds = assign_folds(frame, 5, pixel_digests=digests, group_by=group_by, seed=seed)
        for rows in ([0, 1, 2], [5, 40], [31, 59], [10, 50]):
            assert len(set(split[rows])) == 1, (group_by, seed, rows, split[rows])
            assert len(set(folds[rows])) == 1, (group_by, seed, rows, folds[rows])


def test_image_level_keeps_identical_pixels_together_and_splits_the_rest():
    labels = ["covid"] * 30 + ["normal"] * 30
    frame = _frame(labels, patients=[f"p{i // 3}" for i in range(60)])
    digests = [f"d{i}" for i in range(60)]
    digests[0] = digests[1] = digests[33] = "same"
    groups = split_groups(frame, digests, by_patient=False)
    assert groups[0] == groups[1] == groups[33] and len(set(groups)) == 58
    for seed in range(6):
        split = split_dataset(frame, pixel_digests=digests, group_by="none", seed=seed).to_numpy()
        folds = assign_folds(frame, 5, pixel_digests=digests, group_by="none", seed=seed)
        assert len(set(split[[0, 1, 33]])) == 1 and len(set(folds[[0, 1, 33]])) == 1
    # image level: a patient's other (different) images still may land apart
    splits = [split_dataset(frame, pixel_digests=digests, group_by="none", seed=s).to_numpy() for s in range(6)]
    assert any(len(set(s[rows])) > 1 for s in splits for rows in np.arange(3, 60).reshape(-1, 3))


def test_empty_digests_join_nothing():
    frame = _frame(["covid"] * 3)
    assert len(set(split_groups(frame, ["", "", None]))) == 3
    assert len(set(split_groups(frame, ["", "", None], by_patient=False))) == 3


def test_without_the_column_patient_grouping_is_unchanged():
    labels = ["covid"] * 30 + ["normal"] * 30
    frame = _frame(labels, patients=[f"p{i // 3}" for i in range(60)])
    blank = frame.assign(near_duplicates=[""] * 60)
    assert split_groups(frame).tolist() == split_groups(blank).tolist() == [i - i % 3 for i in range(60)]
    for seed in (0, 3):
        assert split_dataset(frame, seed=seed).equals(split_dataset(blank, seed=seed))
        assert assign_folds(frame, 5, seed=seed).tolist() == assign_folds(blank, 5, seed=seed).tolist()
