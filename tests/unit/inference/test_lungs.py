"""Tests for lung masks at inference (covidxray.inference.lungs) and ``covidxray lungs segment``."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from covidxray.errors import CovidXrayError
from covidxray.inference.lungs import (
    IMPLAUSIBLE_AREA,
    LOW_CONFIDENCE,
    NO_LUNG,
    OK,
    ONE_LUNG,
    SEGMENTER,
    UNREADABLE,
    LungSegmenter,
    keep_lungs,
    load_segmenter,
    lung_quality,
    mask_from_probabilities,
)
from helpers import write_dicom, write_png


def ellipses(size: int, centres=((0.3, 0.5), (0.7, 0.5)), radii=(0.14, 0.3)) -> np.ndarray:
    """Boolean ellipses at ``centres`` (x, y as fractions of the side): synthetic lungs."""
    yy, xx = np.mgrid[:size, :size] / size
    mask = np.zeros((size, size), bool)
    for cx, cy in centres:
        mask |= ((xx - cx) / radii[0]) ** 2 + ((yy - cy) / radii[1]) ** 2 < 1
    return mask


class FixedModel:
    """Stands in for the U-Net: every image gets the same probability map (two lungs, or one
    where the image is inverted, i.e. mostly bright)."""

    def __init__(self, size: int):
        self.two, self.one = ellipses(size).astype("float32"), ellipses(size, ((0.3, 0.5),)).astype("float32")

    def predict_on_batch(self, x):
        maps = [self.two if image.mean() < 128 else self.one for image in x[..., 0]]
        return np.stack(maps)[..., None]


def segmenter(size: int = 32) -> LungSegmenter:
    return LungSegmenter(FixedModel(size), {"kind": "lung-segmenter", "image_size": size, "threshold": 0.5},
                         identity="fixed")


@pytest.mark.parametrize(("mask", "quality"), [
    (ellipses(64), OK),
    (ellipses(64, ((0.3, 0.5),)), ONE_LUNG),
    (np.zeros((64, 64), bool), NO_LUNG),
    (np.ones((64, 64), bool), IMPLAUSIBLE_AREA),
    (ellipses(64, ((0.3, 0.3), (0.3, 0.75)), (0.14, 0.15)), ONE_LUNG),  # two regions one above the other
    (ellipses(64, radii=(0.05, 0.12)), IMPLAUSIBLE_AREA),  # far too small
])
def test_quality_flags(mask, quality):
    assert lung_quality(keep_lungs(mask))[0] == quality


def test_a_fuzzy_probability_map_is_low_confidence():
    crisp = ellipses(64).astype("float32")
    fuzzy = np.clip(crisp * 0.7 + np.random.default_rng(0).uniform(0, 0.45, crisp.shape), 0, 1)
    assert mask_from_probabilities(crisp, (64, 64)).quality == OK
    lungs = mask_from_probabilities(fuzzy, (64, 64))
    assert lungs.quality == LOW_CONFIDENCE and "unsure" in lungs.reason
    assert "uncertain pixels cover " in lungs.reason


def test_uncertain_pixels_over_the_lung_area_are_not_a_share_over_100_percent():
    """Issue 30: 'uncertain pixels 149% of the lung area' read as nonsense; more than the lungs is 'N times'."""
    mask = ellipses(64)
    probabilities = np.where(mask, 0.95, 0.5).astype("float32")  # every pixel outside the lungs uncertain
    quality, reason = lung_quality(mask, probabilities=probabilities)
    assert quality == LOW_CONFIDENCE
    assert "%" not in reason and "uncertain pixels cover 2.8 times the lung area" in reason
    quality, reason = lung_quality(mask, probabilities=np.where(mask, 0.5, 0.0).astype("float32"))
    assert quality == LOW_CONFIDENCE and "uncertain pixels cover 100% of the lung area" in reason


def test_keep_lungs_drops_specks_and_fills_holes():
    mask = ellipses(100)
    mask[50, 30] = False  # a hole
    mask[2:4, 2:4] = True  # a speck
    cleaned = keep_lungs(mask)
    assert cleaned[50, 30] and not cleaned[2, 2]


def test_masks_come_back_at_the_image_size_with_box_and_area():
    lungs = mask_from_probabilities(ellipses(32).astype("float32"), (300, 200))
    assert lungs.mask.shape == (300, 200)
    x0, y0, x1, y1 = lungs.bbox
    assert 0 < x0 < x1 <= 200 and 0 < y0 < y1 <= 300
    assert lungs.quality == OK and 0.1 < lungs.lung_area_fraction < 0.4


def test_tiny_and_blank_images_are_flagged_not_segmented():
    tiny, blank, fine = np.zeros((1, 300), np.uint8), np.full((64, 64), 90, np.uint8), np.zeros((64, 64), np.uint8)
    fine[10:20, 5:30] = 50
    stretched = np.repeat(np.arange(64, dtype=np.uint8)[None, :], 64, axis=0)  # a 1-pixel-high image made square
    results = segmenter().segment([tiny, blank, fine, stretched, stretched.T])
    assert [r.quality for r in results] == [NO_LUNG, NO_LUNG, OK, NO_LUNG, NO_LUNG]
    assert "too small" in results[0].reason and "blank" in results[1].reason
    assert "1 pixel high or wide" in results[3].reason and "1 pixel high or wide" in results[4].reason
    assert results[0].mask.shape == (1, 300) and results[0].bbox is None


def test_segment_files_writes_masks_and_overlays_and_flags_without_stopping(tmp_path):
    dark = np.full((50, 40), 40, np.uint8)
    dark[::7] = 90
    dark[:, ::6] += 20  # detail along both sides (an image the same in every column is not segmented)
    bright = 255 - dark  # the fixed model finds one lung in it
    paths = [write_png(tmp_path / "in" / "a.png", dark), write_png(tmp_path / "in" / "b.png", bright),
             write_png(tmp_path / "in" / "flat.png", np.zeros((1, 80), np.uint8))]
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not an image")
    results = segmenter().segment_files([*paths, broken], tmp_path / "out")
    assert [r["quality"] for r in results] == [OK, OK, NO_LUNG, UNREADABLE]
    assert results[1]["warning"].startswith(str(paths[1])) and "inverted" in results[1]["warning"]
    assert str(paths[2]) in results[2]["warning"] and str(broken) in results[3]["warning"]
    for r in results[:3]:
        mask = np.asarray(__import__("PIL.Image").Image.open(r["mask"]))
        assert mask.shape == __import__("PIL.Image").Image.open(r["path"]).size[::-1]
        assert set(np.unique(mask)) <= {0, 255}
        assert (tmp_path / "out" / f"{tmp_path.joinpath(r['path']).stem}_overlay.png").is_file()
    assert results[3]["mask"] is None and results[3]["bbox"] is None


def test_masks_are_cached_by_content(tmp_path, monkeypatch):
    image = np.zeros((40, 40), np.uint8)
    image[5:30] = 70
    path = write_png(tmp_path / "x.png", image)
    first = segmenter().segment_files([path], cache_dir=tmp_path / "cache")
    cached = segmenter()
    monkeypatch.setattr(cached, "segment", lambda images: pytest.fail("the cached mask was not used"))
    assert cached.segment_files([path], cache_dir=tmp_path / "cache") == first


def test_an_inverted_monochrome1_dicom_is_read_the_right_way_round(tmp_path):
    pixels = np.full((40, 40), 3000, np.uint16)  # MONOCHROME1: high values are dark
    pixels[::5] = 1000
    pixels[:, ::6] += 300
    path = write_dicom(tmp_path / "x.dcm", pixels, photometric="MONOCHROME1")
    [result] = segmenter().segment_files([path])
    assert result["quality"] == OK and result["warning"] is None


def tiny_run(folder, size: int = 32):
    from covidxray.models.unet import unet

    folder.mkdir(parents=True, exist_ok=True)
    unet(size, (4, 8, 8)).save(folder / "model.keras")
    (folder / SEGMENTER).write_text(json.dumps({"kind": "lung-segmenter", "image_size": size, "widths": [4, 8, 8],
                                                "threshold": 0.5}))
    return folder


def test_load_segmenter_reads_a_run_and_refuses_a_classifier_run(tmp_path):
    lungs = load_segmenter(tiny_run(tmp_path / "run"))
    assert lungs.image_size == 32 and lungs.identity
    [result] = lungs.segment([np.random.default_rng(0).integers(0, 256, (70, 50), dtype=np.uint8)])
    assert result.mask.shape == (70, 50)
    (tmp_path / "classifier").mkdir()
    with pytest.raises(CovidXrayError, match="not a lung segmenter"):
        load_segmenter(tmp_path / "classifier")


def run_cli(argv) -> int:
    from covidxray.cli.lungs import add_lungs_commands

    parser = argparse.ArgumentParser(prog="covidxray")
    parser.add_argument("--quiet", action="store_true")
    add_lungs_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_segment_prints_the_documented_json(tmp_path, capsys):
    run = tiny_run(tmp_path / "run")
    rng = np.random.default_rng(0)
    folder = tmp_path / "xrays"
    write_png(folder / "a.png", rng.integers(0, 256, (64, 48), dtype=np.uint8))
    write_png(folder / "b.png", rng.integers(0, 256, (1, 64), dtype=np.uint8))  # 1 px high
    assert run_cli(["--quiet", "lungs", "segment", str(folder), "--out", str(tmp_path / "out"), "--run", str(run),
                    "--format", "json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [r["path"] for r in results] == [str(folder / "a.png"), str(folder / "b.png")]
    for r in results:
        assert {"path", "lung_area_fraction", "bbox", "quality"} <= set(r)
    assert results[1]["quality"] == NO_LUNG and f"{folder / 'b.png'}: no-lung" in captured.err
    assert (tmp_path / "out" / "a_lungs.png").is_file() and (tmp_path / "out" / "a_overlay.png").is_file()
    assert run_cli(["--quiet", "lungs", "segment", str(folder / "a.png"), "--out", str(tmp_path / "out"),
                    "--run", str(run)]) == 0
    assert capsys.readouterr().out.split()[:4] == ["path", "quality", "lung_area", "bbox"]


@pytest.mark.slow
def test_the_shipped_preset_segments_held_out_jsrt_films():
    import pandas as pd

    from covidxray.data.masks import read_pair
    from covidxray.presets import preset_dir
    from covidxray.training.segmentation import dice_iou
    from helpers import shared_data_dir

    root = shared_data_dir()
    split = pd.read_csv(preset_dir("lungs_unet_jsrt_ieee8023") / "split.csv")  # paths relative to the data folder
    held_out = split[(split.split == "test") & (split.source == "jsrt")].head(10)
    assert len(held_out) == 10
    lungs = load_segmenter()
    pairs = [read_pair(root / p, root / m) for p, m in zip(held_out["path"], held_out["mask_path"])]
    results = lungs.segment([image for image, _ in pairs])
    dices = [dice_iou(truth, r.mask)[0] for (_, truth), r in zip(pairs, results)]
    assert np.mean(dices) > 0.9, dices


def test_special_files_are_refused_unread_as_predict_refuses_them(tmp_path):
    """Issue 30: a FIFO (reading it hangs) and a link to a device (a link to /dev/zero read 3 GB in 21 s) are
    not read: listed unreadable with what they are, the others segmented. Run in a thread: the old code hung."""
    import os
    import threading

    good = write_png(tmp_path / "in" / "good.png", np.full((40, 40), 60, np.uint8))
    os.mkfifo(tmp_path / "in" / "pipe.png")
    (tmp_path / "in" / "device.png").symlink_to("/dev/null")  # refused from its kind, never opened
    paths = [tmp_path / "in" / "pipe.png", tmp_path / "in" / "device.png", good]
    done = []
    worker = threading.Thread(target=lambda: done.append(segmenter().segment_files(paths)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    if not done:  # blocked reading the FIFO: let it go (a writer that closes at once), then fail
        try:
            os.close(os.open(tmp_path / "in" / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        worker.join(timeout=20)
        pytest.fail("segment_files blocked on a special file")
    pipe, device, image = done[0]
    assert pipe["quality"] == device["quality"] == UNREADABLE and image["quality"] != UNREADABLE
    assert "pipe.png: not a regular file (a FIFO (named pipe)); not read" in pipe["warning"]
    assert "device.png: not a regular file (a device); not read" in device["warning"]


def test_the_table_escapes_control_characters_in_file_names():
    """Issue 30: a file name holding an escape sequence or a newline is shown, not obeyed, as in predict's table."""
    from covidxray.cli.lungs import format_lungs

    results = [{"path": "/x/\x1b[31mred\nnext.png", "quality": OK, "lung_area_fraction": 0.3, "bbox": [1, 2, 3, 4]},
               {"path": "/x/b.png", "quality": UNREADABLE, "lung_area_fraction": None, "bbox": None}]
    table = format_lungs(results, "table")
    assert "\x1b" not in table and len(table.splitlines()) == 3
    assert "/x/\\x1b[31mred\\nnext.png" in table.splitlines()[1]
