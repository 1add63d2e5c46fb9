"""Tests for lung-mask datasets (covidxray.data.masks): pairing, patient ids, checks, split."""

from __future__ import annotations

import numpy as np
import pytest

from covidxray.data.masks import load_pairs, mask_table, read_mask, resize_mask, split_masks
from covidxray.errors import CovidXrayError, DatasetError, ImageReadError
from helpers import shared_data_dir, write_png


def lungs(size: int = 40) -> np.ndarray:
    """Two ellipses side by side: a synthetic lung mask (uint8, 255 inside)."""
    yy, xx = np.mgrid[:size, :size] / size
    left = ((xx - 0.3) / 0.14) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    right = ((xx - 0.7) / 0.14) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    return np.where(left | right, 255, 0).astype(np.uint8)


def mask_folder(root, name: str, count: int, metadata: str | None = None):
    folder = root / name
    for i in range(count):
        write_png(folder / "images" / f"x{i}.png", np.full((40, 40), 60 + i, np.uint8))
        write_png(folder / "lung-masks" / f"x{i}.png", lungs())
    if metadata is not None:
        (folder / "metadata.csv").write_text(metadata)
    return folder


def test_mask_table_pairs_images_and_masks_with_patients_and_sources(tmp_path):
    jsrt = mask_folder(tmp_path, "jsrt", 3, "filename,nodule\nx0.png,yes\n")
    ieee = mask_folder(tmp_path, "ieee8023", 4, "patientid,filename\n7,x0.png\n7,x1.png\n8,x2.png\n9,x3.png\n")
    (ieee / "lung-masks" / "orphan.png").write_bytes((ieee / "lung-masks" / "x0.png").read_bytes())
    table = mask_table([jsrt, ieee])
    assert list(table.columns) == ["path", "mask_path", "patient_id", "source"]
    assert len(table) == 7  # the orphan mask is left out
    assert table.loc[table.source == "jsrt", "patient_id"].nunique() == 3  # each film its own patient
    assert table.loc[table.source == "ieee8023", "patient_id"].tolist() == [
        "ieee8023-7", "ieee8023-7", "ieee8023-8", "ieee8023-9"]


def test_a_folder_without_masks_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="no lung-masks/ folder"):
        mask_table(tmp_path)


def test_read_mask_rejects_an_empty_file_and_a_mask_of_the_wrong_size(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png: empty mask file"):
        read_mask(empty)
    wrong = write_png(tmp_path / "wrong.png", lungs(40))
    with pytest.raises(ImageReadError, match=r"wrong.png: mask is 40x40 px but its image is 50x30 px"):
        read_mask(wrong, (30, 50))
    assert read_mask(wrong, (40, 40)).sum() == (lungs(40) > 0).sum()


def test_load_pairs_resizes_and_reports_bad_pairs_by_file(tmp_path):
    folder = mask_folder(tmp_path, "set", 3)
    write_png(folder / "lung-masks" / "x1.png", lungs(20))  # wrong size
    images, masks, failed = load_pairs(mask_table(folder), 16)
    assert images.shape == masks.shape == (3, 16, 16)
    assert set(np.unique(masks)) <= {0, 1}
    assert list(failed) == [str(folder / "images" / "x1.png")]
    assert "x1.png: mask is 20x20 px" in failed[str(folder / "images" / "x1.png")]
    assert masks[1].sum() == 0 and masks[0].sum() > 0


def test_resize_mask_keeps_the_area_roughly():
    mask = lungs(200) > 0
    small = resize_mask(mask, 50)
    assert small.shape == (50, 50)
    assert abs(small.mean() - mask.mean()) < 0.01


def test_split_keeps_patients_together_and_every_source_in_every_split(tmp_path):
    rows = "patientid,filename\n" + "".join(f"{i // 2},x{i}.png\n" for i in range(40))
    table = mask_table([mask_folder(tmp_path, "a", 20), mask_folder(tmp_path, "b", 40, rows)])
    split = split_masks(table, seed=0)
    assert set(split) == {"train", "validation", "test"}
    assert (table.assign(split=split).groupby("patient_id")["split"].nunique() == 1).all()
    for name in ("train", "validation", "test"):
        assert set(table.loc[split == name, "source"]) == {"a", "b"}


def test_the_shared_mask_sets_read_as_documented():
    root = shared_data_dir()
    table = mask_table([root / "jsrt", root / "ieee8023"])
    counts = table["source"].value_counts().to_dict()
    assert counts == {"ieee8023": 427, "jsrt": 247}
    assert table.loc[table.source == "ieee8023", "patient_id"].nunique() < 427


def test_mask_table_needs_a_folder():
    with pytest.raises(CovidXrayError):
        mask_table([])
