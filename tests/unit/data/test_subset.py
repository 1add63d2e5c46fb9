"""write_subset: a seeded, per-class sample of a dataset as a manifest that trains."""

import pandas as pd
import pytest

from covidxray.data.sources import load_dataset
from covidxray.data.subset import write_subset
from covidxray.errors import DatasetError
from helpers import make_dataset


def test_subset_has_at_most_n_per_class_and_loads(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6)
    manifest = write_subset(data, tmp_path / "elsewhere" / "small.csv", per_class=4, seed=1)
    table = load_dataset(manifest)
    assert table["label"].value_counts().to_dict() == {"covid": 4, "normal": 4, "pneumonia": 4}
    full = load_dataset(data).set_index("path")
    assert set(table["path"]) <= set(full.index)
    assert (table.set_index("path")["patient_id"] == full.loc[table["path"], "patient_id"]).all()
    again = pd.read_csv(write_subset(data, tmp_path / "again.csv", per_class=4, seed=1))
    other = pd.read_csv(write_subset(data, tmp_path / "other.csv", per_class=4, seed=2))
    assert again.equals(pd.read_csv(manifest)) and not other.equals(again)  # the seed decides


def test_subset_keeps_small_classes_whole(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=3)
    table = load_dataset(write_subset(data, tmp_path / "s.csv", per_class=10))
    assert len(table) == 9


def test_subset_needs_a_positive_count(tmp_path):
    with pytest.raises(DatasetError, match="at least 1"):
        write_subset(make_dataset(tmp_path / "d", per_class=2), tmp_path / "s.csv", per_class=0)
