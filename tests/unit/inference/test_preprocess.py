"""covidxray.inference.preprocess: decoded images to model inputs, with a fake and the shipped lung segmenter."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from covidxray.config import TrainConfig
from covidxray.data.lungviews import FULL, crop_box
from covidxray.errors import CovidXrayError
from covidxray.inference.lungs import LungMask
from covidxray.inference.preprocess import ModelInputs, Preprocessing
from helpers import shared_data_dir

SIZE = 32


def lungs_mask(side: int, shift: int = 0) -> np.ndarray:
    """Two side-by-side rectangles in the middle of a ``side`` x ``side`` image."""
    mask = np.zeros((side, side), bool)
    q = side // 8
    mask[2 * q + shift:6 * q, q + shift:3 * q + 2] = True
    mask[2 * q + shift:6 * q, 5 * q:7 * q - shift] = True
    return mask


class FakeSegmenter:
    """Returns prepared masks and flags, and records each call."""

    def __init__(self, masks, quality):
        self.masks, self.quality, self.calls = masks, quality, []

    def segment_cached(self, images, digests, cache_dir=None):
        self.calls.append({"shape": np.shape(images), "digests": list(digests), "cache_dir": cache_dir})
        return [LungMask(m, q) for m, q in zip(self.masks, self.quality)]


class Refuses:
    def segment_cached(self, *args, **kwargs):
        raise AssertionError("segmented although the lung mode does not need it")


def batch(side: int, n: int = 3, seed: int = 0):
    """Images with bright lungs over a darker, noisy background, their masks and flags (row 1 flagged)."""
    rng = np.random.default_rng(seed)
    masks = np.stack([lungs_mask(side, i) for i in range(n)])
    images = np.where(masks, rng.integers(150, 220, masks.shape), rng.integers(10, 90, masks.shape)).astype(np.uint8)
    quality = ["ok", "no-lung", "ok"][:n]
    return images, masks, quality


def prepared(lungs: str, size: int = SIZE, **kwargs):
    prep = Preprocessing(size=size, lungs=lungs, **kwargs)
    images, masks, quality = batch(prep.decode_side)
    prep._segmenter = FakeSegmenter(masks, quality)
    return prep, images, masks, quality


def test_without_lungs_the_images_pass_unchanged():
    prep = Preprocessing(size=SIZE)
    prep._segmenter = Refuses()
    assert prep.decode_side == SIZE
    images, _, _ = batch(SIZE)
    for given in (images, images[..., None]):
        inputs = prep.apply(given)
        assert isinstance(inputs, ModelInputs)
        assert inputs.images.shape == (3, SIZE, SIZE, 1) and inputs.images.dtype == np.uint8
        np.testing.assert_array_equal(inputs.images[..., 0], images)
        assert inputs.lungs is None and inputs.quality is None and inputs.boxes is None
        assert inputs.fallback == []


def test_lungs_true_segments_the_whole_images_too():
    prep = Preprocessing(size=SIZE)
    images, masks, quality = batch(SIZE)
    prep._segmenter = FakeSegmenter(masks, quality)
    inputs = prep.apply(images, lungs=True)
    np.testing.assert_array_equal(inputs.images[..., 0], images)  # not cropped: lungs none
    np.testing.assert_array_equal(inputs.lungs, masks)
    assert inputs.quality == quality and (inputs.boxes == FULL).all()


@pytest.mark.parametrize("lungs, side", [("none", SIZE), ("crop", 2 * SIZE)])
def test_a_wrong_side_is_refused_naming_the_expected_one(lungs, side):
    prep = Preprocessing(size=SIZE, lungs=lungs)
    prep._segmenter = Refuses()
    wrong = np.zeros((2, side + 8, side + 8), np.uint8)
    with pytest.raises(CovidXrayError, match=f"decoded at {side}x{side}"):
        prep.apply(wrong)
    with pytest.raises(CovidXrayError, match=f"decoded at {side}x{side}"):
        prep.apply(np.zeros((side, side), np.uint8))  # one image, not a batch


def test_crop_mode_crops_each_reliable_image_to_its_lungs():
    prep, images, masks, quality = prepared("crop")
    assert prep.decode_side == 2 * SIZE
    digests = ["d0", "d1", "d2"]
    inputs = prep.apply(images[..., None], digests)
    call, = prep._segmenter.calls
    assert call["digests"] == digests and call["shape"][1:3] == (2 * SIZE, 2 * SIZE)
    assert inputs.images.shape == (3, SIZE, SIZE, 1) and inputs.images.dtype == np.uint8
    assert inputs.lungs.shape == (3, SIZE, SIZE) and inputs.lungs.dtype == bool
    assert inputs.boxes.shape == (3, 4)
    assert ((inputs.boxes >= 0) & (inputs.boxes <= 1)).all()
    for i in (0, 2):
        assert tuple(inputs.boxes[i]) == pytest.approx(crop_box(masks[i]))
        assert inputs.boxes[i][2] - inputs.boxes[i][0] < 1
        assert inputs.lungs[i].mean() > masks[i].mean()  # the lungs fill more of the crop
    assert inputs.quality == quality and inputs.fallback == [1]
    assert tuple(inputs.boxes[1]) == (0.0, 0.0, 1.0, 1.0)  # flagged: the whole image
    whole = np.asarray(Image.fromarray(images[1]).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(inputs.images[1, ..., 0], whole)


def test_crop_mode_without_digests_passes_none():
    prep, images, _, _ = prepared("crop")
    prep.apply(images)
    assert prep._segmenter.calls[0]["digests"] == [None, None, None]


def test_describe_names_the_lung_mode():
    assert Preprocessing(SIZE).describe() == "the whole image"
    assert "crop" in Preprocessing(SIZE, "crop").describe()


def test_from_config_takes_the_runs_settings():
    config = TrainConfig(data="x", lungs="crop", image_size=64)
    prep = Preprocessing.from_config(config)
    assert (prep.size, prep.lungs, prep.segmenter_path, prep.cache_dir) == (64, "crop", None, None)
    assert prep.decode_side == 128
    config = TrainConfig(data="x", lungs="crop", image_size=48, lung_segmenter="seg")
    prep = Preprocessing.from_config(config, cache_dir="c")  # where this machine caches: the runtime's
    assert (prep.size, prep.lungs, prep.segmenter_path, prep.cache_dir) == (48, "crop", "seg", "c")


def test_the_shipped_segmenter_crops_real_films_and_caches_their_masks(tmp_path, monkeypatch):
    from covidxray.inference.lungs import load_segmenter

    jsrt = shared_data_dir() / "jsrt"
    names = ["JPCLN001.png", "JPCNN010.png"]
    films = [Image.open(jsrt / "images" / name).convert("L").resize((256, 256), Image.Resampling.BILINEAR)
             for name in names]
    truth = [np.asarray(Image.open(jsrt / "lung-masks" / name).resize((256, 256), Image.Resampling.NEAREST)) > 127
             for name in names]
    images = np.stack([np.asarray(f) for f in films])
    digests = [hashlib.sha256(image.tobytes()).hexdigest() for image in images]
    segmenter = load_segmenter()
    prep = Preprocessing(size=128, lungs="crop", cache_dir=str(tmp_path))
    prep._segmenter = segmenter
    assert prep.decode_side == 256

    inputs = prep.apply(images, digests)
    assert inputs.quality == ["ok", "ok"] and inputs.fallback == []
    assert inputs.images.shape == (2, 128, 128, 1)
    widths = inputs.boxes[:, 2] - inputs.boxes[:, 0]
    assert (widths < 0.98).all() and (widths > 0.5).all()
    for box, mask in zip(inputs.boxes, truth):  # close to the box around the radiologists' lungs
        assert np.abs(box - np.asarray(crop_box(mask))).max() < 0.08
    cached = list((tmp_path / "lungs").glob("*/*.npz"))
    assert len(cached) == 2

    def no_model(*args, **kwargs):
        raise AssertionError("the cached masks were not used")

    monkeypatch.setattr(segmenter, "segment", no_model)
    again = prep.apply(images, digests)
    np.testing.assert_array_equal(again.images, inputs.images)
    np.testing.assert_array_equal(again.boxes, inputs.boxes)
    assert again.quality == ["ok", "ok"]


def test_decode_side_is_the_size_without_lungs_and_twice_it_with_them():
    assert Preprocessing(128).decode_side == 128
    assert Preprocessing(128, "crop").decode_side == 256


def test_decode_side_is_capped_at_the_largest_side_but_never_below_the_size(monkeypatch):
    import covidxray.inference.preprocess as preprocess

    assert Preprocessing(800, "crop").decode_side == 1024
    assert Preprocessing(1024, "crop").decode_side == 1024
    monkeypatch.setattr(preprocess, "LARGEST_DECODE", 512)
    assert Preprocessing(300, "crop").decode_side == 512
    assert Preprocessing(600, "crop").decode_side == 600  # never smaller than the model's side


def test_the_settings_say_what_to_do_and_travel_with_the_run():
    none, crop = Preprocessing(64), Preprocessing(64, "crop")
    assert (none.segments, crop.segments) == (False, True)
    assert none.short() == [] and crop.short() == ["lung crop"]
    assert crop.settings() == {"lungs": "crop"}
    assert Preprocessing.from_settings(crop.settings()).settings() == crop.settings()
    assert Preprocessing.from_settings({}).settings() == none.settings()  # a run from before the settings
    older = {"lungs": "crop", "intensity": "none"}  # a run of before --intensity was removed, with it off
    assert Preprocessing.from_settings(older).settings() == crop.settings()
    assert crop.fallback(["a.png", "b.png"], ["ok", "no-lung"]) == {"b.png": "no-lung"}
    assert none.fallback(["a.png"], ["no-lung"]) == {} and crop.fallback(["a.png"], None) == {}


def test_an_unknown_lung_mode_is_refused():
    with pytest.raises(CovidXrayError, match="--lungs must be one of none, crop; got 'lobes'"):
        Preprocessing(8, "lobes")


@pytest.mark.parametrize("intensity", ["clahe", "equalize"])
def test_settings_of_a_run_that_harmonised_its_intensities_are_refused(intensity):
    with pytest.raises(CovidXrayError, match=rf"^run/metrics.json: this run was trained with intensity harmonisation "
                       rf"\(--intensity {intensity}\), which was removed from covidxray \(git history keeps it, in the "
                       r"commits before its removal\); retrain the run without it$"):
        Preprocessing.from_settings({"lungs": "crop", "intensity": intensity}, where="run/metrics.json")


def test_settings_of_a_run_that_masked_everything_but_the_lungs_are_refused():
    with pytest.raises(CovidXrayError, match=r"^run/metrics.json: this run was trained with every pixel outside the "
                       r"lungs set to 0 \(--lungs mask\), which was removed from covidxray \(git history keeps it, in "
                       r"the commits before its removal\); retrain the run without it$"):
        Preprocessing.from_settings({"lungs": "mask"}, where="run/metrics.json")

