"""covidxray.data.lungviews: crop boxes, lung views and blanked regions."""

from __future__ import annotations

import numpy as np
import pytest

from covidxray.data.lungviews import (
    FULL,
    MARGIN,
    blank_regions,
    crop_box,
    lung_view,
    resize_box,
)


def two_lungs(side: int = 128, top: int = 32, bottom: int = 96, left: int = 24, right: int = 104) -> np.ndarray:
    """Two side-by-side rectangles (the lungs) inside ``[top, bottom) x [left, right)``, a gap between them."""
    mask = np.zeros((side, side), bool)
    middle = (left + right) // 2
    mask[top:bottom, left:middle - 4] = True
    mask[top:bottom, middle + 4:right] = True
    return mask


def lung_image(mask: np.ndarray, inside: int = 200, outside: int = 40) -> np.ndarray:
    return np.where(mask, inside, outside).astype(np.uint8)


# --- crop_box --------------------------------------------------------------------------------

def test_crop_box_is_the_lungs_plus_the_margin_as_fractions():
    mask = two_lungs()  # rows 32..96, columns 24..104 of 128
    x0, y0, x1, y1 = crop_box(mask)
    left, top, right, bottom = MARGIN
    width, height = 104 - 24, 96 - 32
    assert x0 == pytest.approx((24 - left * width) / 128)
    assert y0 == pytest.approx((32 - top * height) / 128)
    assert x1 == pytest.approx((104 + right * width) / 128)
    assert y1 == pytest.approx((96 + bottom * height) / 128)


def test_crop_box_has_a_larger_margin_below_than_above():
    mask = two_lungs()
    _, y0, _, y1 = crop_box(mask)
    above, below = 32 / 128 - y0, y1 - 96 / 128
    assert below > above > 0
    assert below / above == pytest.approx(MARGIN[3] / MARGIN[1])


def test_crop_box_is_clipped_to_the_image():
    mask = two_lungs(side=64, top=0, bottom=64, left=0, right=64)
    assert crop_box(mask) == FULL
    box = crop_box(two_lungs(side=64, top=2, bottom=62, left=1, right=40))
    assert box[0] == 0.0 and box[1] == 0.0 and box[3] == 1.0 and box[2] < 1.0
    assert all(0.0 <= v <= 1.0 for v in box)


def test_crop_box_of_an_empty_mask_is_the_whole_image():
    assert crop_box(np.zeros((50, 40), bool)) == FULL


def test_crop_box_of_a_non_square_mask_uses_each_sides_own_length():
    mask = np.zeros((100, 200), bool)
    mask[20:80, 50:150] = True
    x0, y0, x1, y1 = crop_box(mask, margin=(0, 0, 0, 0))
    assert (x0, y0, x1, y1) == pytest.approx((0.25, 0.2, 0.75, 0.8))


# --- resize_box ------------------------------------------------------------------------------

def test_resize_box_of_the_whole_image_at_its_size_is_the_image_itself():
    image = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    assert resize_box(image, FULL, 64) is image


def test_resize_box_cuts_the_box_out():
    image = (np.arange(128 * 128).reshape(128, 128) % 251).astype(np.uint8)
    centre = resize_box(image, (0.25, 0.25, 0.75, 0.75), 64)  # the central 64 x 64 pixels, not rescaled
    np.testing.assert_array_equal(centre, image[32:96, 32:96])


def test_resize_box_resizes_to_the_size():
    image = np.zeros((100, 80), np.uint8)
    image[:, 40:] = 255
    half = resize_box(image, (0.5, 0.0, 1.0, 1.0), 32)
    assert half.shape == (32, 32) and half.dtype == np.uint8
    assert half[:, 2:].min() == 255  # the bright right half fills the view
    assert resize_box(image, FULL, 20).shape == (20, 20)


# --- lung_view -------------------------------------------------------------------------------

def test_lung_view_none_is_the_whole_image_resized():
    mask = two_lungs()
    image = lung_image(mask)
    view, view_mask, box = lung_view(image, mask, 64)
    assert box == FULL and view.shape == (64, 64) and view.dtype == np.uint8
    np.testing.assert_array_equal(view, resize_box(image, FULL, 64))
    assert view_mask.shape == (64, 64) and view_mask.dtype == bool
    assert view_mask.mean() == pytest.approx(mask.mean(), abs=0.02)


def test_lung_view_crop_enlarges_the_lungs():
    mask = two_lungs()
    image = lung_image(mask)
    view, view_mask, box = lung_view(image, mask, 64, crop=True)
    assert view.shape == view_mask.shape == (64, 64)
    assert box == crop_box(mask) and box != FULL
    assert view_mask.mean() > 1.5 * mask.mean()  # the lungs fill more of the view than of the film
    assert view_mask.mean() == pytest.approx(mask.mean() / ((box[2] - box[0]) * (box[3] - box[1])), abs=0.03)


def test_lung_view_mask_is_aligned_with_the_view():
    mask = two_lungs()
    image = lung_image(mask)
    for crop in (False, True):
        view, view_mask, _ = lung_view(image, mask, 64, crop=crop)
        agree = ((view > 120) == view_mask).mean()  # bright pixels are the lungs
        assert agree > 0.97, (crop, agree)


def test_lung_view_without_lungs_uses_the_whole_image():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (96, 96), dtype=np.uint8)
    whole = resize_box(image, FULL, 48)
    view, view_mask, box = lung_view(image, np.zeros((96, 96), bool), 48, crop=True)
    assert box == FULL and not view_mask.any()
    np.testing.assert_array_equal(view, whole)  # not cropped
    view, view_mask, box = lung_view(image, None, 48, crop=True)
    assert box == FULL and view_mask is None
    np.testing.assert_array_equal(view, whole)


# --- blank_regions ---------------------------------------------------------------------------

def batch_with_masks(channel: bool):
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, (3, 32, 32), dtype=np.uint8)
    masks = np.stack([two_lungs(32, 4 + i, 28, 2, 30) for i in range(3)])
    return (images[..., None] if channel else images), masks


@pytest.mark.parametrize("channel", [False, True])
def test_blank_regions_blanks_the_lungs_or_the_rest(channel):
    images, masks = batch_with_masks(channel)
    original = images.copy()
    plane = (lambda a: a[..., 0]) if channel else (lambda a: a)
    lungs = blank_regions(images, masks, "lungs")
    outside = blank_regions(images, masks, "outside-lungs")
    assert lungs.shape == outside.shape == images.shape and lungs.dtype == images.dtype
    assert (plane(lungs)[masks] == 0).all()
    np.testing.assert_array_equal(plane(lungs)[~masks], plane(images)[~masks])
    assert (plane(outside)[~masks] == 0).all()
    np.testing.assert_array_equal(plane(outside)[masks], plane(images)[masks])
    np.testing.assert_array_equal(images, original)  # the input is not modified


def test_blank_regions_refuses_another_region():
    images, masks = batch_with_masks(False)
    with pytest.raises(ValueError, match="region must be 'lungs' or 'outside-lungs'"):
        blank_regions(images, masks, "box")

