"""RandomAffine: one random rotation + zoom + shift per image, resampled once, only in training."""

import keras
import numpy as np
import pytest

from covidxray.models.augment import RandomAffine, augmentation

SIZE = 40


def smooth_images(n=4, size=SIZE):
    yy, xx = np.mgrid[:size, :size].astype("float32")
    image = 127 + 100 * np.sin(xx / 5) * np.cos(yy / 7)
    return np.repeat(image[None, :, :, None], n, axis=0)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_zero_ranges_leave_the_images_unchanged():
    images = smooth_images()
    out = numpy(RandomAffine(rotation=0, zoom=0, shift=0, seed=0)(images, training=True))
    np.testing.assert_allclose(out, images, atol=1e-3)


def test_inactive_outside_training():
    images = smooth_images()
    np.testing.assert_array_equal(numpy(RandomAffine(seed=0)(images)), images)


def test_the_maps_stay_within_their_ranges():
    layer = RandomAffine(rotation=5, zoom=0.1, shift=0.05, seed=0)
    t = numpy(layer.transforms(2000, height=SIZE, width=SIZE))
    a0, a1, a2, b0, b1, b2 = t[:, :6].T
    angle = np.degrees(np.arctan2(b0, a0))
    scale = np.hypot(a0, b0)
    assert np.abs(angle).max() <= 5 + 1e-4 and np.abs(angle).max() > 4.5  # the whole range is drawn
    assert 0.9 - 1e-5 <= scale.min() < 0.92 and 1.08 < scale.max() <= 1.1 + 1e-5
    np.testing.assert_allclose(a1, -b0, atol=1e-6)  # a rotation times a scale: no shear
    np.testing.assert_allclose(b1, a0, atol=1e-6)
    centre = (SIZE - 1) / 2  # the centre moves by the shift alone
    moved_x, moved_y = a0 * centre + a1 * centre + a2 - centre, b0 * centre + b1 * centre + b2 - centre
    assert np.abs(moved_x).max() <= 0.05 * SIZE + 1e-4 and np.abs(moved_y).max() <= 0.05 * SIZE + 1e-4
    assert abs(np.corrcoef(moved_x, moved_y)[0, 1]) < 0.1  # drawn separately
    assert np.std(angle) > 2 and abs(np.corrcoef(angle, scale)[0, 1]) < 0.1


def test_resamples_with_the_drawn_map():
    """Each output pixel (x, y) is the input, bilinearly read at the drawn map of (x, y)."""
    from scipy import ndimage

    images = smooth_images(3)
    out = numpy(RandomAffine(rotation=20, zoom=0.2, shift=0.1, seed=3)(images, training=True))
    maps = numpy(RandomAffine(rotation=20, zoom=0.2, shift=0.1, seed=3).transforms(3, height=SIZE, width=SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE].astype("float64")
    for image, result, (a0, a1, a2, b0, b1, b2, _, _) in zip(images, out, maps):
        source = [b0 * xx + b1 * yy + b2, a0 * xx + a1 * yy + a2]  # (row, column) read for each output pixel
        expected = ndimage.map_coordinates(image[..., 0].astype("float64"), source, order=1, mode="constant")
        inside = (source[0] >= 1) & (source[0] <= SIZE - 2) & (source[1] >= 1) & (source[1] <= SIZE - 2)
        assert inside.mean() > 0.5
        np.testing.assert_allclose(result[..., 0][inside], expected[inside], atol=0.05)


def test_seeded_draws_repeat_and_change_from_call_to_call():
    images = smooth_images()
    first, second = RandomAffine(seed=7), RandomAffine(seed=7)
    a, b = numpy(first(images, training=True)), numpy(second(images, training=True))
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(numpy(first(images, training=True)), a)
    assert not np.allclose(a[0], a[1])  # each image of a batch gets its own map


def test_one_resampling_keeps_more_detail_than_three():
    """The point of composing: three successive Keras resamplings blur more than one."""
    images = smooth_images(8)
    keras_layers = keras.Sequential([
        keras.layers.RandomRotation(5 / 360, fill_mode="constant", seed=0),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=1),
        keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=2),
    ])
    def roughness(x):  # mean absolute difference between neighbours in the centre
        centre = x[:, 10:-10, 10:-10, 0]
        return np.abs(np.diff(centre, axis=1)).mean() + np.abs(np.diff(centre, axis=2)).mean()
    ours = np.mean([roughness(numpy(RandomAffine(seed=s)(images, training=True))) for s in range(3)])
    theirs = np.mean([roughness(numpy(keras_layers(images, training=True))) for _ in range(3)])
    assert ours > theirs


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="rotation"):
        RandomAffine(rotation=-1)
    with pytest.raises(ValueError, match="zoom"):
        RandomAffine(zoom=1.5)


def test_saved_and_loaded_with_its_settings(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 1))
    model = keras.Model(inputs, RandomAffine(rotation=3, zoom=0.2, shift=0.01, seed=5, name="affine")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras").get_layer("affine")
    assert isinstance(loaded, RandomAffine)
    assert (loaded.rotation, loaded.zoom, loaded.shift, loaded.seed) == (3, 0.2, 0.01, 5)


def test_augmentation_is_the_affine_map_then_contrast_with_no_flip():
    assert [type(layer).__name__ for layer in augmentation(0).layers] == ["RandomAffine", "RandomContrast"]
