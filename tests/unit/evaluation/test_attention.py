"""covidxray.evaluation.attention: the share of Grad-CAM heat inside the lungs."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from covidxray.evaluation.attention import heat_in_lungs, heat_shares, heat_text
from covidxray.inference.heatmaps import grad_cam

SIZE = 32
CLASSES = ("covid", "normal", "pneumonia")


# --- heat_shares -----------------------------------------------------------------------------

def test_heat_shares_all_half_none_and_zero():
    masks = np.zeros((4, 4, 4), bool)
    masks[0] = True
    masks[1, :, :2] = True
    masks[3, :2] = True
    maps = np.ones((4, 4, 4))
    maps[2] = 0.0  # no heat: no share
    maps[3, :2] = 3.0  # three quarters of the heat in the top half
    shares = heat_shares(maps, masks)
    assert shares[0] == 1.0 and shares[1] == 0.5 and np.isnan(shares[2])
    assert shares[3] == pytest.approx(0.75)  # 2 rows x 4 x 3 of 2 x 4 x 3 + 2 x 4 x 1
    assert heat_shares(maps[:1], np.zeros((1, 4, 4), bool))[0] == 0.0


# --- heat_in_lungs ---------------------------------------------------------------------------

def bright_lung_model() -> keras.Model:
    """A convolution with positive weights: its Grad-CAM map is the local brightness, hot in the bright lungs."""
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", kernel_initializer="ones",
                            bias_initializer=keras.initializers.Constant(0.01), name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.Constant(0.5))(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model():
    return bright_lung_model()


@pytest.fixture(scope="module")
def data():
    """Six random images, lungs of different sizes brighter than the rest, two flagged masks."""
    rng = np.random.default_rng(0)
    n = 6
    lungs = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        top, bottom = 4 + i, 26 - (i % 3)
        lungs[i, top:bottom, 3:14] = True
        lungs[i, top:bottom, 18:29 - i] = True
    images = np.where(lungs, rng.integers(170, 230, lungs.shape), rng.integers(0, 30, lungs.shape))
    images = images.astype(np.uint8)[..., None]
    quality = ["ok", "no-lung", "ok", "ok", "one-lung", "ok"]
    table = pd.DataFrame({"label": ["covid", "normal", "covid", "pneumonia", "normal", "normal"],
                          "source": ["b", "a", "a", "b", "b", "a"]})
    predicted = np.array([0, 1, 2, 0, 1, 1])
    return images, lungs, quality, predicted, table


def test_heat_in_lungs_measures_the_reliable_images(model, data):
    images, lungs, quality, predicted, table = data
    result = heat_in_lungs(model, images, lungs, quality, predicted, table, CLASSES)
    assert set(result) == {"heat", "lung_area", "images", "left_out", "per_class", "per_source"}
    ok = np.array([q == "ok" for q in quality])
    assert result["images"] == 4 and result["left_out"] == 2
    assert result["lung_area"] == pytest.approx(lungs[ok].mean())
    assert result["lung_area"] != pytest.approx(lungs.mean())  # the flagged images' masks are not counted
    expected = heat_shares(grad_cam(model, images[ok], predicted[ok]), lungs[ok])
    assert result["heat"] == pytest.approx(expected.mean())
    assert result["lung_area"] < result["heat"] <= 1.0  # the heat sits in the bright lungs


def test_heat_in_lungs_per_class_and_per_source(model, data):
    images, lungs, quality, predicted, table = data
    result = heat_in_lungs(model, images, lungs, quality, predicted, table, CLASSES)
    per_class, per_source = result["per_class"], result["per_source"]
    # ok rows: 0 covid b, 2 covid a, 3 pneumonia b, 5 normal a
    assert list(per_class) == ["covid", "normal", "pneumonia"]
    assert {c: v["images"] for c, v in per_class.items()} == {"covid": 2, "normal": 1, "pneumonia": 1}
    assert {s: v["images"] for s, v in per_source.items()} == {"a": 2, "b": 2}
    assert per_class["normal"]["lung_area"] == pytest.approx(lungs[5].mean())
    assert per_source["a"]["lung_area"] == pytest.approx(lungs[[2, 5]].mean())
    weighted = sum(v["heat"] * v["images"] for v in per_source.values()) / result["images"]
    assert weighted == pytest.approx(result["heat"])


def test_a_class_with_only_flagged_images_is_left_out(model, data):
    images, lungs, _, predicted, table = data
    quality = ["ok", "no-lung", "ok", "ok", "one-lung", "no-lung"]  # every normal image flagged
    result = heat_in_lungs(model, images, lungs, quality, predicted, table, CLASSES)
    assert "normal" not in result["per_class"] and result["images"] == 3 and result["left_out"] == 3


def test_heat_in_lungs_without_masks_says_why(model, data):
    images, _, quality, predicted, table = data
    result = heat_in_lungs(model, images, None, quality, predicted, table, CLASSES)
    assert result["images"] == 0 and result["left_out"] == 6
    assert "no lung masks" in result["reason"]


def test_heat_in_lungs_with_every_mask_flagged_says_why(model, data):
    images, lungs, _, predicted, table = data
    result = heat_in_lungs(model, images, lungs, ["no-lung"] * 6, predicted, table, CLASSES)
    assert result["images"] == 0 and result["left_out"] == 6
    assert "found reliably" in result["reason"]
    assert "heat" not in result


# --- heat_text -------------------------------------------------------------------------------

def test_heat_text_of_a_measurement():
    text = heat_text({"heat": 0.62, "lung_area": 0.31, "images": 40, "left_out": 3})
    assert text.startswith("62% of the Grad-CAM heat falls inside the lungs on 40 test images")
    assert "cover 31% of the model's input" in text
    assert text.endswith("; 3 image(s) whose lungs were not found reliably left out")
    assert "left out" not in heat_text({"heat": 0.62, "lung_area": 0.31, "images": 40, "left_out": 0})


def test_heat_text_when_not_measured():
    assert heat_text({"images": 0, "left_out": 5, "reason": "no lung masks"}) == \
        "heat inside the lungs: not measured (no lung masks)"
    assert heat_text({}) == "heat inside the lungs: not measured (no image)"
