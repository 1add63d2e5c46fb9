"""covidxray.data.shards: exact round trip, refused folders, datasets sharded together.

(The ``data shard`` command and training from shards: tests/e2e/test_cli_shards.py; the batches
read from shards: tests/unit/training/test_batches.py.)"""

import json

import numpy as np
import pytest

from covidxray.config import TrainConfig
from covidxray.data.images import read_image
from covidxray.data.loading import load_labelled_images
from covidxray.data.shards import ShardWriter, load_shards, shard_file, shard_image_size, write_shards
from covidxray.data.sources import load_dataset
from covidxray.errors import CovidXrayError, DatasetError
from helpers import make_dataset

SIZE = 48  # the synthetic images' own size: the round trip compares undisturbed pixels


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """300 synthetic images (100 per class) in three shards of 100."""
    root = tmp_path_factory.mktemp("shards")
    data = make_dataset(root / "data", per_class=100)
    out = root / "shards"
    meta = write_shards(str(data), out, SIZE, shard_size=100)
    assert meta["images"] == 300
    return data, out


def test_shards_round_trip_pixels_and_labels(sharded):
    data, out = sharded
    assert sorted(p.name for p in out.glob("images-*.npy")) == [shard_file(i) for i in range(3)]
    meta = json.loads((out / "shards.json").read_text())
    assert meta["shards"] == [100, 100, 100] and meta["image_size"] == SIZE and meta["skipped"] == {}
    table, images, skipped = load_shards(out)
    source = load_dataset(data)
    assert images.shape == (300, SIZE, SIZE, 1) and skipped == {}
    assert list(table["path"]) == list(source["path"]) and list(table["label"]) == list(source["label"])
    assert list(table["patient_id"]) == list(source["patient_id"])
    pixels = np.asarray(images)
    for i, path in enumerate(source["path"]):
        assert np.array_equal(pixels[i, ..., 0], read_image(path)), path
    picked = [299, 0, 150, 7]  # any order, across shards, reads the same pixels
    assert np.array_equal(np.asarray(images[picked]), pixels[picked])
    assert np.array_equal(images[150], pixels[150])


def test_datasets_sharded_together_count_a_shared_image_once(tmp_path):
    first = make_dataset(tmp_path / "a", per_class=2, manifest=False)
    second = make_dataset(tmp_path / "b", per_class=2, seed=1, manifest=False)
    for path in list(second.rglob("*.png")):  # other file names: names alone would mark them as repeats
        path.rename(path.with_name("b_" + path.name))
    shared = first / "covid" / "covid_000.png"
    (second / "covid" / "copy_of_covid_000.png").write_bytes(shared.read_bytes())  # same pixels, another name
    meta = write_shards([str(first), str(second)], tmp_path / "shards", SIZE)
    assert meta["images"] == 12  # 6 + 6, the copy left out
    table, _, _ = load_shards(tmp_path / "shards")
    assert str(shared) in set(table["path"]) and not table["path"].str.contains("copy_of").any()
    with pytest.raises(DatasetError, match="a shard folder cannot be combined with other --data"):
        load_labelled_images([str(tmp_path / "shards"), str(first)], ("covid", "normal", "pneumonia"), SIZE)


def test_bad_shard_folders_are_refused(sharded, tmp_path):
    data, out = sharded
    with pytest.raises(DatasetError, match="shards hold 48px images, the model takes 64px"):
        load_labelled_images(str(out), ("covid", "normal", "pneumonia"), 64)
    with pytest.raises(CovidXrayError, match="shards hold 48px images; train with --image-size 48"):
        TrainConfig(data=str(out), image_size=64).resolve()
    assert TrainConfig(data=str(out)).resolve().image_size == SIZE  # the shards' size, whatever the model's
    assert shard_image_size(str(out)) == SIZE and shard_image_size(str(data)) is None
    with pytest.raises(DatasetError, match="folder is not empty"):
        write_shards(str(data), out, 32)
    assert (out / "shards.json").is_file()  # the refused write removed nothing
    interrupted = tmp_path / "interrupted"
    writer = ShardWriter(interrupted, 8, shard_size=2)
    for i in range(3):
        writer.add(np.full((8, 8), i, np.uint8), {"path": f"x{i}.png", "label": "covid"})
    # never closed: two images on disk, no table, no shards.json
    with pytest.raises(DatasetError, match="incomplete shard folder"):
        load_shards(interrupted)
