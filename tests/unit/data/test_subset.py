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


def test_subset_leaves_out_what_another_dataset_holds_copied_or_near_duplicated(tmp_path, capsys):
    from PIL import Image

    from covidxray.cli import main

    test_set = make_dataset(tmp_path / "test-set", per_class=4, seed=1)
    pretrain = make_dataset(tmp_path / "pretrain", per_class=5, seed=2)
    originals = sorted((test_set / "covid").glob("*.png"))
    copy = pretrain / "covid" / "same_pixels.png"  # another name, the same pixels
    copy.write_bytes(originals[0].read_bytes())
    resized = pretrain / "normal" / "resized.jpg"  # the same film, smaller and re-encoded
    Image.open(originals[1]).resize((100, 100)).save(resized, quality=85)
    rows = (pretrain / "manifest.csv").read_text().rstrip("\n").split("\n")
    rows += ["covid/same_pixels.png,covid,x-1,synthetic", "normal/resized.jpg,normal,x-2,synthetic"]
    (pretrain / "manifest.csv").write_text("\n".join(rows) + "\n")

    kept = load_dataset(write_subset(pretrain / "manifest.csv", tmp_path / "kept.csv", exclude=[test_set]))
    assert len(kept) == 15 and not {str(copy), str(resized)} & set(kept["path"])  # only the two copies go
    assert len(load_dataset(write_subset(pretrain / "manifest.csv", tmp_path / "all.csv"))) == 17
    assert main(["--quiet", "data", "subset", "--data", str(pretrain / "manifest.csv"), "--exclude", str(test_set),
                 "--per-class", "3", "--out", str(tmp_path / "cli.csv")]) == 0
    assert "9 images (3 covid, 3 normal, 3 pneumonia)" in capsys.readouterr().out
    assert not {str(copy), str(resized)} & set(pd.read_csv(tmp_path / "cli.csv")["path"])
    with pytest.raises(DatasetError, match="every image is also in"):
        write_subset(test_set, tmp_path / "none.csv", exclude=[test_set])


def test_unreadable_images_are_left_out_and_a_folder_of_only_unreadable_ones_is_refused(tmp_path, caplog):
    """Issue 30: a folder of six unreadable files was written to a manifest, exit 0."""
    data = make_dataset(tmp_path / "data", per_class=4, manifest=False)
    broken = sorted((data / "covid").glob("*.png"))[:2]
    for path in broken:
        path.write_bytes(b"not an image")
    table = load_dataset(write_subset(data, tmp_path / "s.csv", per_class=3))
    assert table["label"].value_counts().to_dict() == {"covid": 2, "normal": 3, "pneumonia": 3}  # 2 readable left
    assert not {str(p) for p in broken} & set(table["path"])
    assert any("left out 2 image(s) that cannot be read" in r.getMessage() for r in caplog.records)
    bad = tmp_path / "bad"
    for label in ("covid", "normal"):
        (bad / label).mkdir(parents=True)
        for i in range(3):
            (bad / label / f"{i}.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"bad: none of its 6 image\(s\) can be read \(e\.g\. .*not an image file"):
        write_subset(bad, tmp_path / "none.csv")
    assert not (tmp_path / "none.csv").exists()
