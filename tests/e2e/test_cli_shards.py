"""``covidxray data shard`` and training and evaluating from a shard folder, on the command line."""

import json

import numpy as np
import pandas as pd
import pytest

from covidxray.cli import main
from covidxray.data.loading import load_labelled_images
from covidxray.data.shards import ShardWriter
from covidxray.data.sources import load_dataset
from covidxray.errors import DatasetError
from covidxray.evaluation.evaluate import evaluate
from helpers import make_dataset

SIZE = 48  # the synthetic images' own size


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """300 synthetic images (100 per class) in three shards of 100, through the command line."""
    root = tmp_path_factory.mktemp("shards")
    data = make_dataset(root / "data", per_class=100)
    out = root / "shards"
    assert main(["--quiet", "data", "shard", "--data", str(data), "--out", str(out),
                 "--image-size", str(SIZE), "--shard-size", "100"]) == 0
    return data, out


def test_train_from_shards_one_epoch(sharded, tmp_path):
    data, out = sharded
    meta = json.loads((out / "shards.json").read_text())
    assert meta["shards"] == [100, 100, 100] and meta["image_size"] == SIZE and meta["skipped"] == {}
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
    from_shards, from_files = (evaluate(str(run), str(d), include_seen=True) for d in (out, data))
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
