"""covidxray.data.loading: dataset paths to labelled, decoded images."""

from __future__ import annotations

import numpy as np
import pytest

from covidxray.data.images import read_image, resize_square
from covidxray.data.loading import load_labelled_images
from covidxray.data.shards import write_shards
from covidxray.errors import DatasetError
from helpers import CLASSES, make_dataset


def test_images_targets_and_table_line_up(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=3)
    loaded = load_labelled_images(str(data), ("covid", "normal"), 32, cache_dir=tmp_path / "cache", progress=False)
    assert loaded.images.shape == (6, 32, 32, 1) and loaded.classes == ("covid", "normal")  # pneumonia left out
    assert list(loaded.targets) == [("covid", "normal").index(label) for label in loaded.table["label"]]
    for row, path in enumerate(loaded.table["path"]):
        np.testing.assert_array_equal(loaded.images[row, ..., 0], resize_square(read_image(path), 32))
    assert loaded.table["pixels"].str.len().eq(40).all()  # a digest per image
    half = loaded.subset(np.arange(6) % 2 == 0)
    assert len(half.table) == 3 and list(half.table.index) == [0, 1, 2]
    np.testing.assert_array_equal(half.images, loaded.images[::2])


def test_unreadable_files_are_skipped_and_named(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=3, manifest=False)
    broken = data / "covid" / "covid_001.png"
    broken.write_bytes(b"no")
    loaded = load_labelled_images(str(data), CLASSES, 32, progress=False)
    assert len(loaded.table) == 8 and list(loaded.skipped) == [str(broken.resolve())]
    for path in data.rglob("*.png"):
        path.write_bytes(b"no")
    with pytest.raises(DatasetError, match="none of the 9 images could be decoded"):
        load_labelled_images(str(data), CLASSES, 32, progress=False)


def test_a_missing_class_is_allowed_only_when_asked(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=2, classes=("covid",), manifest=False)
    with pytest.raises(DatasetError, match="no images of class normal"):
        load_labelled_images(str(data), ("covid", "normal"), 32)
    assert len(load_labelled_images(str(data), ("covid", "normal"), 32, require_all=False).table) == 2


def test_an_image_repeated_in_a_later_dataset_counts_once(tmp_path):
    first = make_dataset(tmp_path / "a", per_class=2, manifest=False)
    second = make_dataset(tmp_path / "b", per_class=2, seed=1, manifest=False)
    (second / "covid" / "copy.png").write_bytes((first / "covid" / "covid_000.png").read_bytes())
    loaded = load_labelled_images([str(first), str(second)], CLASSES, 32)
    assert len(loaded.table) == 12 and not loaded.table["path"].str.endswith("copy.png").any()


def test_a_shard_folder_is_read_lazily(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=2)
    write_shards(str(data), tmp_path / "shards", 32, progress=False)
    from_files = load_labelled_images(str(data), ("covid", "pneumonia"), 32)
    from_shards = load_labelled_images(str(tmp_path / "shards"), ("covid", "pneumonia"), 32)
    assert not isinstance(from_shards.images, np.ndarray)  # a ShardArray, read when indexed
    assert list(from_shards.table["path"]) == list(from_files.table["path"])
    np.testing.assert_array_equal(np.asarray(from_shards.images), from_files.images)
    np.testing.assert_array_equal(from_shards.targets, from_files.targets)
