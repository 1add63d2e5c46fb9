"""Tests for the lung U-Net (covidxray.models.unet): shapes, preprocessing inside, save and load."""

from __future__ import annotations

import numpy as np
import pytest

from covidxray.models.unet import ImageStandardization, unet


def test_unet_maps_images_to_per_pixel_probabilities():
    model = unet(32, (4, 8, 8))
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    out = np.asarray(model.predict(images, verbose=0))
    assert out.shape == (3, 32, 32, 1)
    assert ((out >= 0) & (out <= 1)).all()


def test_unet_refuses_a_size_its_levels_cannot_halve():
    with pytest.raises(ValueError, match="multiple of"):
        unet(30, (4, 8, 8))
    with pytest.raises(ValueError, match="two or more levels"):
        unet(32, (4,))


def test_standardization_ignores_exposure_and_keeps_a_flat_image_finite():
    layer = ImageStandardization()
    x = np.random.default_rng(1).uniform(0, 100, (2, 8, 8, 1)).astype("float32")
    a, b = np.asarray(layer(x)), np.asarray(layer(x * 2 + 50))
    assert np.allclose(a, b, atol=0.05)
    assert np.isfinite(np.asarray(layer(np.zeros((1, 8, 8, 1), "float32")))).all()


def test_save_and_load_give_the_same_masks(tmp_path):
    from covidxray.models import load_model

    model = unet(32, (4, 8, 8))
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert np.allclose(model.predict(images, verbose=0), loaded.predict(images, verbose=0), atol=1e-5)
