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
    loaded = load_labelled_images(str(data), ("covid", "normal"), 32, cache_dir=tmp_path / "cache")
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
    loaded = load_labelled_images(str(data), CLASSES, 32)
    assert len(loaded.table) == 8 and list(loaded.skipped) == [str(broken.resolve())]
    for path in data.rglob("*.png"):
        path.write_bytes(b"no")
    with pytest.raises(DatasetError, match="none of the 9 images could be decoded"):
        load_labelled_images(str(data), CLASSES, 32)


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
    write_shards(str(data), tmp_path / "shards", 32)
    from_files = load_labelled_images(str(data), ("covid", "pneumonia"), 32)
    from_shards = load_labelled_images(str(tmp_path / "shards"), ("covid", "pneumonia"), 32)
    assert not isinstance(from_shards.images, np.ndarray)  # a ShardArray, read when indexed
    assert list(from_shards.table["path"]) == list(from_files.table["path"])
    np.testing.assert_array_equal(np.asarray(from_shards.images), from_files.images)
    np.testing.assert_array_equal(from_shards.targets, from_files.targets)


# --- near-duplicates ------------------------------------------------------------------------------

import io  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from covidxray.data.loading import NearDuplicates  # noqa: E402
from helpers import write_image  # noqa: E402


def _table(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(path, label, dataset) rows."""
    return pd.DataFrame(rows, columns=["path", "label", "dataset"])


def _pairs(*pairs: tuple[int, int]) -> pd.DataFrame:
    return pd.DataFrame({"a": [a for a, _ in pairs], "b": [b for _, b in pairs], "phash": [0] * len(pairs),
                         "layout": [1.0] * len(pairs), "detail": [0.95] * len(pairs)})


def test_no_pairs_keep_everything_in_no_group():
    table = _table([("A/x.png", "covid", "A"), ("B/y.png", "covid", "B")])
    near = NearDuplicates.from_pairs(table, _pairs())
    assert near.keep.tolist() == [True, True] and near.groups == ["", ""] and near.dropped == {}


def test_a_same_label_copy_in_a_later_dataset_counts_once(caplog):
    # dataset order is the order of first appearance, not row order: A's copy is its third row
    table = _table([("A/p.png", "normal", "A"), ("B/y.png", "covid", "B"), ("A/x.png", "covid", "A"),
                    ("B/z.png", "normal", "B")])
    with caplog.at_level(logging.INFO, logger="covidxray.data.loading"):
        near = NearDuplicates.from_pairs(table, _pairs((1, 2)))
    assert near.keep.tolist() == [True, False, True, True]
    assert near.dropped == {"B/y.png": "B/y.png: a near-duplicate of A/x.png (an earlier dataset); counted once"}
    assert near.groups == ["", "", "", ""]  # one copy left: no group to keep together
    assert len(near.pairs) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "1 near-duplicate images counted once, 0 left out for a label conflict"]


def test_copies_whose_labels_disagree_are_all_left_out_and_named(caplog):
    table = _table([("A/x.png", "covid", "A"), ("A/w.png", "normal", "A"), ("B/y.png", "normal", "B")])
    with caplog.at_level(logging.INFO, logger="covidxray.data.loading"):
        near = NearDuplicates.from_pairs(table, _pairs((0, 2)))
    assert near.keep.tolist() == [False, True, False] and near.groups == ["", "", ""]
    assert set(near.dropped) == {"A/x.png", "B/y.png"}
    for path in ("A/x.png", "B/y.png"):
        assert near.dropped[path] == (
            f"{path}: a near-duplicate of an image with another label (A/x.png (covid), B/y.png (normal)); "
            "left out, since which label is right cannot be told")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["2 images are near-duplicates of an image with another label; left out (covidxray data "
                        "audit names them)"]


def test_same_label_copies_within_one_dataset_stay_in_one_group():
    table = _table([("A/a.png", "covid", "A"), ("A/b.png", "normal", "A"), ("A/c.png", "covid", "A"),
                    ("A/d.png", "covid", "A"), ("A/e.png", "normal", "A")])
    near = NearDuplicates.from_pairs(table, _pairs((2, 3)))
    assert near.keep.all() and near.dropped == {}
    assert near.groups == ["", "", "near-2", "near-2", ""]


def test_a_group_of_three_across_datasets_keeps_the_earlier_datasets_copies_together():
    # A/x ~ A/x2 ~ B/y (B/y a copy of A/x2, which is a copy of A/x), all covid
    table = _table([("A/x.png", "covid", "A"), ("A/x2.png", "covid", "A"), ("A/o.png", "normal", "A"),
                    ("B/y.png", "covid", "B"), ("B/o.png", "normal", "B")])
    near = NearDuplicates.from_pairs(table, _pairs((0, 1), (1, 3)))
    assert near.keep.tolist() == [True, True, True, False, True]
    assert near.groups == ["near-0", "near-0", "", "", ""]
    assert near.dropped == {"B/y.png": "B/y.png: a near-duplicate of A/x.png (an earlier dataset); counted once"}


def test_a_group_of_three_datasets_with_one_other_label_is_left_out_whole():
    table = _table([("A/x.png", "covid", "A"), ("B/y.png", "covid", "B"), ("C/z.png", "pneumonia", "C"),
                    ("C/o.png", "covid", "C")])
    near = NearDuplicates.from_pairs(table, _pairs((0, 1), (1, 2)))  # x ~ y ~ z: z joins them through y
    assert near.keep.tolist() == [False, False, False, True]
    shown = "(A/x.png (covid), B/y.png (covid), C/z.png (pneumonia))"
    assert all(shown in near.dropped[p] for p in ("A/x.png", "B/y.png", "C/z.png")) and len(near.dropped) == 3


def _film(seed: int, size: int = 192) -> np.ndarray:
    """A smooth film-like image (coarse regions and fine texture): large enough to re-encode."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    coarse, fine = gaussian_filter(rng.normal(0, 1, (size, size)), 10), gaussian_filter(rng.normal(0, 1, (size, size)), 1.5)
    image = coarse / coarse.std() + 0.4 * fine / fine.std()
    return ((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)


def _copy(image: np.ndarray, side: int = 150, quality: int = 70, label: bool = False) -> np.ndarray:
    """Resized, burnt-in label (optional), JPEG re-encoded."""
    picture = Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR)
    if label:
        ImageDraw.Draw(picture).rectangle([4, 4, 40, 14], fill=255)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def test_near_duplicates_across_and_within_datasets_end_to_end(tmp_path, caplog):
    first = make_dataset(tmp_path / "a", per_class=3, manifest=False)
    second = make_dataset(tmp_path / "b", per_class=3, seed=1, manifest=False)
    x, y, z = _film(1), _film(2), _film(3)
    write_image(first / "covid" / "x.png", x)
    write_image(second / "covid" / "x_copy.jpg", _copy(x))  # same label: counted once
    write_image(first / "normal" / "y.png", y)
    write_image(second / "pneumonia" / "y_copy.jpg", _copy(y, side=170))  # another label: both out
    write_image(first / "covid" / "z.png", z)
    write_image(first / "covid" / "z_labelled.jpg", _copy(z, side=192, label=True))  # within A: both stay
    with caplog.at_level(logging.INFO, logger="covidxray.data.loading"):
        loaded = load_labelled_images([str(first), str(second)], CLASSES, 32, cache_dir=tmp_path / "cache")
    table = loaded.table
    names = table["path"].map(lambda p: p.rsplit("/", 1)[-1])
    assert len(table) == 9 + 4 - 1 + 9 + 2 - 2 == loaded.images.shape[0] == len(loaded.targets)
    assert (table["dataset"] == str(second)).sum() == 9  # B: its two copies gone
    assert not names.isin(["x_copy.jpg", "y.png", "y_copy.jpg"]).any() and names.isin(["x.png"]).any()
    by_name = {Path(p).name: why for p, why in loaded.skipped.items()}
    assert set(by_name) == {"x_copy.jpg", "y.png", "y_copy.jpg"}
    assert by_name["x_copy.jpg"].endswith(f"a near-duplicate of {first.resolve() / 'covid' / 'x.png'} "
                                          "(an earlier dataset); counted once")
    assert "(normal)" in by_name["y.png"] and "(pneumonia)" in by_name["y_copy.jpg"]
    assert by_name["y.png"].split(": ", 1)[1] == by_name["y_copy.jpg"].split(": ", 1)[1]
    groups = dict(zip(names, table["near_duplicates"], strict=True))
    assert groups["z.png"] == groups["z_labelled.jpg"] != "" and groups["z.png"].startswith("near-")
    assert (table["near_duplicates"] != "").sum() == 2
    assert list(loaded.targets) == [CLASSES.index(label) for label in table["label"]]
    row = int(np.flatnonzero(names == "z.png")[0])
    np.testing.assert_array_equal(loaded.images[row, ..., 0], resize_square(read_image(str(first / "covid" / "z.png")), 32))
    messages = [r.getMessage() for r in caplog.records]
    assert "1 near-duplicate images counted once, 2 left out for a label conflict" in messages
    assert "2 images are near-duplicates of an image with another label; left out (covidxray data audit names them)" in messages


def test_synthetic_datasets_have_no_near_duplicates(tmp_path):
    """helpers.make_dataset's noise images are never near-duplicates: nothing is dropped, no group."""
    loaded = load_labelled_images([str(make_dataset(tmp_path / "a", per_class=4)),
                                   str(make_dataset(tmp_path / "b", per_class=4, seed=1))], CLASSES, 32)
    assert len(loaded.table) == 24 and loaded.skipped == {}
    assert loaded.table["near_duplicates"].tolist() == [""] * 24


def test_an_identical_copy_with_another_label_is_left_out_like_a_near_duplicate(tmp_path):
    first = make_dataset(tmp_path / "a", per_class=2, manifest=False)
    second = make_dataset(tmp_path / "b", per_class=2, seed=1, manifest=False)
    write_image(first / "covid" / "x.png", _film(1))
    write_image(second / "normal" / "x_same.png", _film(1))
    loaded = load_labelled_images([str(first), str(second)], CLASSES, 32, cache_dir=tmp_path / "cache")
    assert not loaded.table["path"].str.endswith("x.png").any()
    assert {Path(p).name for p in loaded.skipped} == {"x.png", "x_same.png"}
