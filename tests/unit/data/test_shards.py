"""Shard folders: exact round trip, one pass over every image per epoch, seeded order, training."""

import json

import numpy as np
import pandas as pd
import pytest
from covidxray.data.batches import ShuffledBatches
from covidxray.evaluate import evaluate_run

from covidxray.cli import main
from covidxray.data.images import read_image
from covidxray.data.loading import load_labelled_images
from covidxray.data.shards import ShardWriter, load_shards, shard_file, write_shards
from covidxray.data.sources import load_dataset
from covidxray.errors import DatasetError
from helpers import make_dataset

SIZE = 48  # the synthetic images' own size: the round trip compares undisturbed pixels


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """300 synthetic images (100 per class) in three shards of 100, through the command line."""
    root = tmp_path_factory.mktemp("shards")
    data = make_dataset(root / "data", per_class=100)
    out = root / "shards"
    assert main(["--quiet", "data", "shard", "--data", str(data), "--out", str(out),
                 "--image-size", str(SIZE), "--shard-size", "100"]) == 0
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


def test_every_image_once_per_epoch_in_a_seeded_order(sharded):
    _, out = sharded
    _, images, _ = load_shards(out)
    pixels = np.asarray(images)
    index = np.arange(len(images))  # labels = image numbers, to see which images came
    batches = ShuffledBatches(images, index, 32, seed=5, workers=0)
    assert len(batches) == 10  # 9 batches of 32 and one of 12
    orders = []
    for _ in range(2):
        seen = []
        for step in range(len(batches)):
            x, y = batches[step]
            assert x.dtype == np.float32 and np.array_equal(x, pixels[y].astype(np.float32))
            seen.append(y)
        batches.on_epoch_end()
        seen = np.concatenate(seen)
        assert np.array_equal(np.sort(seen), index)  # each image exactly once
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])  # a new order every epoch
    again = ShuffledBatches(images, index, 32, seed=5, workers=0)
    assert np.array_equal(np.concatenate([again[s][1] for s in range(len(again))]), orders[0])  # repeatable
    other = ShuffledBatches(images, index, 32, seed=6, workers=0)
    assert not np.array_equal(np.concatenate([other[s][1] for s in range(len(other))]), orders[0])
    dropped = ShuffledBatches(images, index, 32, seed=5, drop_remainder=True, workers=0)
    assert len(dropped) == 9 and all(len(dropped[s][1]) == 32 for s in range(9))


def test_train_from_shards_one_epoch(sharded, tmp_path):
    data, out = sharded
    run = tmp_path / "run"
    assert main(["--quiet", "train", "--data", str(out), "--out", str(run), "--epochs", "1", "--seed", "1"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["image_size"] == SIZE  # taken from the shards
    assert sum(metrics["run"]["images"].values()) == 300 and metrics["run"]["epochs_run"] == 1
    assert metrics["run"]["devices"] == 1
    assert len(pd.read_csv(run / "history.csv")) == 1 and (run / "report.md").is_file()
    split = pd.read_csv(run / "split.csv", keep_default_na=False)
    assert sorted(split["path"]) == sorted(load_dataset(data)["path"])
    # The shard folder also serves evaluate, and gives the same scores as the image files.
    from_shards, from_files = (evaluate_run(str(run), str(d), include_seen=True) for d in (out, data))
    assert from_shards["n"] == from_files["n"] == 300
    assert from_shards["accuracy"] == from_files["accuracy"]
    assert from_shards["loss"] == pytest.approx(from_files["loss"], abs=1e-6)


def test_bad_shard_folders_are_refused(sharded, tmp_path, capsys):
    data, out = sharded
    with pytest.raises(DatasetError, match="shards hold 48px images, the model takes 64px"):
        load_labelled_images(str(out), ("covid", "normal", "pneumonia"), 64)
    assert main(["train", "--data", str(out), "--out", str(tmp_path / "r"), "--image-size", "64"]) == 2
    assert "shards hold 48px images; train with --image-size 48" in capsys.readouterr().err
    assert main(["data", "shard", "--data", str(data), "--out", str(out), "--image-size", "32"]) == 2
    assert "folder is not empty" in capsys.readouterr().err
    assert (out / "shards.json").is_file()  # the refused write removed nothing
    interrupted = tmp_path / "interrupted"
    writer = ShardWriter(interrupted, 8, shard_size=2)
    for i in range(3):
        writer.add(np.full((8, 8), i, np.uint8), {"path": f"x{i}.png", "label": "covid"})
    # never closed: two images on disk, no table, no shards.json
    assert main(["train", "--data", str(interrupted), "--out", str(tmp_path / "r2")]) == 2
    assert "incomplete shard folder" in capsys.readouterr().err


def test_datasets_sharded_together_count_a_shared_image_once(tmp_path):
    first = make_dataset(tmp_path / "a", per_class=2, manifest=False)
    second = make_dataset(tmp_path / "b", per_class=2, seed=1, manifest=False)
    for path in list(second.rglob("*.png")):  # other file names: names alone would mark them as repeats
        path.rename(path.with_name("b_" + path.name))
    shared = first / "covid" / "covid_000.png"
    (second / "covid" / "copy_of_covid_000.png").write_bytes(shared.read_bytes())  # same pixels, another name
    meta = write_shards([str(first), str(second)], tmp_path / "shards", SIZE, progress=False)
    assert meta["images"] == 12  # 6 + 6, the copy left out
    table, _, _ = load_shards(tmp_path / "shards")
    assert str(shared) in set(table["path"]) and not table["path"].str.contains("copy_of").any()
    with pytest.raises(DatasetError, match="a shard folder cannot be combined with other --data"):
        load_labelled_images([str(tmp_path / "shards"), str(first)], ("covid", "normal", "pneumonia"), SIZE)
