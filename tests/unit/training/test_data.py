"""covidxray.training.data: read, decode, blank and split the data of a run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidxray.config import TrainConfig
from covidxray.data.shards import write_shards
from covidxray.errors import CovidXrayError
from covidxray.training.data import load_data, prepare_data, split_data
from helpers import make_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("training-data") / "data", per_class=10)


def test_prepare_data_splits_by_patient(data_dir):
    config = TrainConfig(data=str(data_dir), image_size=32, seed=1).resolve()
    data = prepare_data(config)
    assert data.images.shape == (30, 32, 32, 1) and data.images.dtype == np.uint8
    assert data.classes == ("covid", "normal", "pneumonia") and data.skipped == {}
    assert set(data.table["split"]) == {"train", "validation", "test"}
    assert data.table.groupby("patient_id")["split"].nunique().max() == 1
    for split in ("train", "validation", "test"):
        x, y = data.part(split)
        mask = data.mask(split)
        assert len(x) == len(y) == mask.sum()
        assert list(y) == [config.classes.index(label) for label in data.table.loc[mask, "label"]]
    again = prepare_data(config)
    assert list(again.table["split"]) == list(data.table["split"])  # seeded


def test_blank_fraction_hides_the_centre(data_dir):
    plain = load_data(TrainConfig(data=str(data_dir), image_size=32).resolve())
    blanked = load_data(TrainConfig(data=str(data_dir), image_size=32, blank_fraction=0.5).resolve())
    assert blanked.images[:, 8:24, 8:24].max() == 0 and plain.images[:, 8:24, 8:24].max() > 0
    np.testing.assert_array_equal(blanked.images[:, :8], plain.images[:, :8])


def test_split_data_with_given_test_rows(data_dir):
    config = TrainConfig(data=str(data_dir), image_size=32).resolve()
    loaded = load_data(config)
    test_mask = loaded.table["patient_id"].isin(["covid-p0", "normal-p0", "pneumonia-p0"]).to_numpy()
    data = split_data(config, loaded, test_mask=test_mask)
    np.testing.assert_array_equal(data.mask("test"), test_mask)
    assert data.mask("validation").any() and not (data.mask("validation") & test_mask).any()


def test_blanking_a_shard_folder_is_refused(data_dir, tmp_path):
    write_shards(str(data_dir), tmp_path / "shards", 32)
    with pytest.raises(CovidXrayError, match="need the images in memory"):
        load_data(TrainConfig(data=str(tmp_path / "shards"), blank_fraction=0.5).resolve())


def test_blank_lungs_uses_the_central_box_where_the_lungs_were_not_found():
    from covidxray.data.blanking import center_mask
    from covidxray.data.loading import LabelledImages
    from covidxray.training.data import blank_lungs

    images = np.full((2, 8, 8, 1), 200, np.uint8)
    lungs = np.zeros((2, 8, 8), bool)
    lungs[:, 2:6, 1:3] = True  # a "lung" in both; the second image's mask is flagged
    data = LabelledImages(pd.DataFrame({"path": ["a", "b"]}), images, np.array([0, 1]), ("a", "b"),
                          lungs=lungs, lung_quality=["ok", "one-lung"])
    box = center_mask(8, 8)
    hidden = blank_lungs(data, "lungs")[..., 0] == 0
    assert (hidden[0] == lungs[0]).all() and (hidden[1] == box).all()
    kept = blank_lungs(data, "outside-lungs")[..., 0] != 0
    assert (kept[0] == lungs[0]).all() and (kept[1] == box).all()
    assert (images == 200).all()  # the input is not changed


def test_train_refuses_leave_one_source_out_which_is_for_cv(data_dir):
    config = TrainConfig(data=str(data_dir), image_size=32, group_by="source").resolve()
    with pytest.raises(CovidXrayError, match="--group-by source holds out whole sources, one per fold: it is for "
                                             "covidxray cv"):
        prepare_data(config)
