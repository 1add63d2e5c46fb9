"""covidxray.inference.familiarity: is an X-ray like the training data? (Mahalanobis on the model's features)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidxray.errors import CovidXrayError
from covidxray.inference.familiarity import (
    FLAG_SHARE,
    UNLIKE,
    Familiarity,
    familiarity_summary,
    feature_model,
    fit_familiarity,
    model_features,
)
from covidxray.rundir import FAMILIARITY

FEATURES = 8


@pytest.fixture(scope="module")
def gaussian():
    """200 training and 100 validation rows of 8 features from N(0, 1), and the familiarity fitted on them."""
    rng = np.random.default_rng(7)
    train, validation = rng.normal(size=(200, FEATURES)), rng.normal(size=(100, FEATURES))
    return train, validation, Familiarity.fit(train, validation)


def _mahalanobis(features, mean, precision):
    centred = np.asarray(features, dtype=np.float64) - mean
    return np.sqrt(np.array([row @ precision @ row for row in centred]))


# --- fitting ------------------------------------------------------------------------------------


def test_fit_takes_ledoit_wolf_and_the_90_percent_quantile_of_validation_distances_without_probabilities(gaussian):
    from sklearn.covariance import LedoitWolf

    train, validation, familiarity = gaussian
    estimate = LedoitWolf().fit(train)
    np.testing.assert_array_equal(familiarity.mean, estimate.location_)
    np.testing.assert_allclose(familiarity.mean, train.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(familiarity.precision, np.linalg.inv(estimate.covariance_), rtol=1e-9, atol=1e-12)
    assert familiarity.precision.shape == (FEATURES, FEATURES)
    # scikit-learn's own (squared) Mahalanobis distances, independent of Familiarity.distances
    expected = float(np.quantile(np.sqrt(estimate.mahalanobis(validation)), 0.90))
    assert FLAG_SHARE == 0.10 and familiarity.min_probability == 0.0
    assert isinstance(familiarity.threshold, float)
    assert familiarity.threshold == pytest.approx(expected, rel=1e-12)
    # for 8 standard normal features, distances are about sqrt(chi2_8): the 90% point is about 3.6
    assert 2.8 < familiarity.threshold < 4.5


def test_ten_validation_images_in_a_hundred_are_flagged(gaussian):
    _, validation, familiarity = gaussian
    flags = familiarity.unlike(validation)
    assert flags.dtype == bool and flags.shape == (100,)
    assert flags.sum() == 10 and flags[np.argmax(familiarity.distances(validation))]


def test_with_probabilities_half_the_share_is_flagged_by_distance_and_half_by_a_low_probability(gaussian):
    train, validation, _ = gaussian
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(3), len(validation))
    familiarity = Familiarity.fit(train, validation, probabilities)
    distances = familiarity.distances(validation)
    assert familiarity.threshold == pytest.approx(float(np.quantile(distances, 0.95)), rel=1e-12)
    assert familiarity.min_probability == pytest.approx(float(np.quantile(probabilities.max(axis=1), 0.05)))
    far, unsure = distances > familiarity.threshold, probabilities.max(axis=1) < familiarity.min_probability
    assert far.sum() == 5 and unsure.sum() == 5
    flags = familiarity.unlike(validation, probabilities)
    np.testing.assert_array_equal(flags, far | unsure)
    assert 5 < flags.sum() <= 10
    np.testing.assert_array_equal(familiarity.unlike(validation), far)  # without probabilities: distance alone


def test_the_share_is_a_parameter(gaussian):
    train, validation, _ = gaussian
    median = Familiarity.fit(train, validation, share=0.5)
    assert median.threshold == pytest.approx(float(np.median(median.distances(validation))), rel=1e-12)
    assert median.unlike(validation).sum() == 50


def test_far_points_are_flagged_and_the_mean_is_not(gaussian):
    train, _, familiarity = gaussian
    mean, sd = train.mean(axis=0), train.std(axis=0)
    points = np.stack([mean, mean + 10 * sd, mean - 10 * sd, mean + 0.1 * sd])
    distances = familiarity.distances(points)
    assert distances[0] == pytest.approx(0.0, abs=1e-12)
    assert distances[1] > 3 * familiarity.threshold and distances[2] > 3 * familiarity.threshold
    assert familiarity.unlike(points).tolist() == [False, True, True, False]
    assert familiarity.unlike(mean[None]).tolist() == [False]
    one_feature = mean.copy()
    one_feature[3] += 20 * sd[3]  # far along a single feature is enough
    assert familiarity.unlike(one_feature[None]).tolist() == [True]


def test_distances_are_the_mahalanobis_formula():
    familiarity = Familiarity(np.array([1.0, 2.0]), np.diag([4.0, 1 / 9]), threshold=1.5)
    points = np.array([[1, 2], [2, 2], [1, 5], [2, 5], [0, -1]], dtype=np.float32)
    np.testing.assert_allclose(familiarity.distances(points), [0.0, 2.0, 1.0, np.sqrt(5.0), np.sqrt(5.0)],
                               rtol=1e-12)
    assert familiarity.unlike(points).tolist() == [False, True, False, True, True]
    correlated = Familiarity(np.zeros(3), np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]]), 1.0)
    rows = np.random.default_rng(1).normal(size=(6, 3))
    np.testing.assert_allclose(correlated.distances(rows), _mahalanobis(rows, correlated.mean, correlated.precision),
                               rtol=1e-12)
    assert familiarity.distances(np.zeros((0, 2))).shape == (0,)


def test_distances_match_a_direct_computation_after_fitting(gaussian):
    train, validation, familiarity = gaussian
    rows = np.concatenate([train[:5], validation[:5], 3 + validation[5:8]])
    np.testing.assert_allclose(familiarity.distances(rows),
                               _mahalanobis(rows, train.mean(axis=0), familiarity.precision), rtol=1e-10)


# --- saving and loading -------------------------------------------------------------------------


def test_save_and_load_round_trip_exactly(gaussian, tmp_path):
    _, validation, familiarity = gaussian
    familiarity.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FAMILIARITY] == ["familiarity.npz"]  # no temporary file
    loaded = Familiarity.load(tmp_path)
    assert isinstance(loaded, Familiarity)
    np.testing.assert_array_equal(loaded.mean, familiarity.mean)
    np.testing.assert_array_equal(loaded.precision, familiarity.precision)
    assert loaded.threshold == familiarity.threshold and isinstance(loaded.threshold, float)
    assert loaded.min_probability == familiarity.min_probability
    np.testing.assert_array_equal(loaded.distances(validation), familiarity.distances(validation))
    assert Familiarity.load(str(tmp_path)).threshold == familiarity.threshold  # a str folder too


def test_a_file_written_before_the_probability_floor_flags_by_distance_alone(gaussian, tmp_path):
    _, validation, familiarity = gaussian
    np.savez(tmp_path / FAMILIARITY, mean=familiarity.mean, precision=familiarity.precision,
             threshold=familiarity.threshold)
    loaded = Familiarity.load(tmp_path)
    assert loaded.min_probability == 0.0
    unsure = np.full((len(validation), 3), 1 / 3)  # as unsure as three classes can be: still not flagged for it
    np.testing.assert_array_equal(loaded.unlike(validation, unsure), familiarity.unlike(validation))


def test_load_of_a_run_without_the_file_is_none(tmp_path):
    assert Familiarity.load(tmp_path) is None
    assert Familiarity.load(tmp_path / "no such folder") is None
    (tmp_path / FAMILIARITY).mkdir()  # not a file
    assert Familiarity.load(tmp_path) is None


def _assert_names_file_and_fix(error, path):
    message = str(error.value)
    assert message.startswith(f"{path}: unreadable (")
    assert "delete it" in message and "retrain the run" in message
    assert "\n" not in message


@pytest.mark.parametrize("content", [b"this is not a numpy file", b"", b"\x93NUMPY\x01\x00garbage"],
                         ids=["garbage", "empty", "bad-npy-header"])
def test_a_damaged_file_is_an_error_naming_it_and_the_fix(tmp_path, content):
    (tmp_path / FAMILIARITY).write_bytes(content)
    with pytest.raises(CovidXrayError) as error:
        Familiarity.load(tmp_path)
    _assert_names_file_and_fix(error, tmp_path / FAMILIARITY)


@pytest.mark.parametrize("arrays, reason", [
    ({"mean": np.zeros(3), "precision": np.eye(2), "threshold": 1.0}, r"shapes \(3,\) and \(2, 2\) do not fit"),
    ({"mean": np.zeros((3, 1)), "precision": np.eye(3), "threshold": 1.0}, r"shapes \(3, 1\) and \(3, 3\)"),
    ({"mean": np.zeros(3), "precision": np.eye(3)}, "threshold"),
    ({"mean": np.zeros(3), "threshold": 1.0}, "precision"),
    ({"mean": np.zeros(3), "precision": np.eye(3), "threshold": "high"}, "not one finite number"),
], ids=["precision-shape", "mean-2d", "no-threshold", "no-precision", "text-threshold"])
def test_wrong_contents_are_an_error_naming_the_file(tmp_path, arrays, reason):
    np.savez(tmp_path / FAMILIARITY, **arrays)
    with pytest.raises(CovidXrayError, match=reason) as error:
        Familiarity.load(tmp_path)
    _assert_names_file_and_fix(error, tmp_path / FAMILIARITY)


@pytest.mark.parametrize("damage", ["truncated", "flipped-byte"])
def test_a_truncated_or_bit_flipped_file_is_an_error_naming_it(gaussian, tmp_path, damage):
    gaussian[2].save(tmp_path)
    path = tmp_path / FAMILIARITY
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[200] ^= 0xFF  # inside the stored arrays: the zip's CRC check fails
    path.write_bytes(bytes(data))
    with pytest.raises(CovidXrayError) as error:
        Familiarity.load(tmp_path)
    _assert_names_file_and_fix(error, path)


@pytest.mark.parametrize("threshold", [np.array([1.0, 2.0]), np.nan, np.inf])
def test_a_threshold_that_is_not_one_finite_number_is_an_error_naming_the_file(tmp_path, threshold):
    np.savez(tmp_path / FAMILIARITY, mean=np.zeros(3), precision=np.eye(3), threshold=threshold)
    with pytest.raises(CovidXrayError, match="not one finite number") as error:
        Familiarity.load(tmp_path)
    _assert_names_file_and_fix(error, tmp_path / FAMILIARITY)


# --- the summary --------------------------------------------------------------------------------


def test_summary_counts_and_accuracies():
    summary = familiarity_summary([True, False, False, True], [False, True, True, True])
    assert summary == {"images": 4, "unlike": 2, "share_unlike": 0.5, "accuracy_all": 0.75,
                       "accuracy_unflagged": 1.0, "accuracy_unlike": 0.5}
    assert type(summary["images"]) is int and type(summary["unlike"]) is int
    assert type(summary["accuracy_all"]) is float
    assert json.loads(json.dumps(summary)) == summary  # goes into metrics.json as it is


def test_summary_without_correctness_has_only_the_counts():
    assert familiarity_summary(np.array([1, 0, 0, 0, 1], dtype=bool)) == {"images": 5, "unlike": 2,
                                                                         "share_unlike": 0.4}


def test_summary_with_nothing_flagged_has_no_accuracy_on_flagged():
    summary = familiarity_summary(np.zeros(4, dtype=bool), np.array([True, False, True, True]))
    assert summary == {"images": 4, "unlike": 0, "share_unlike": 0.0, "accuracy_all": 0.75,
                       "accuracy_unflagged": 0.75, "accuracy_unlike": None}


def test_summary_with_everything_flagged_or_nothing_at_all():
    assert familiarity_summary([True, True], [True, False]) == {
        "images": 2, "unlike": 2, "share_unlike": 1.0, "accuracy_all": 0.5, "accuracy_unflagged": None,
        "accuracy_unlike": 0.5}
    assert familiarity_summary(np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)) == {
        "images": 0, "unlike": 0, "share_unlike": None, "accuracy_all": None, "accuracy_unflagged": None,
        "accuracy_unlike": None}


def test_the_message_says_what_the_flag_means():
    assert "unlike the data this model was trained on" in UNLIKE and "\n" not in UNLIKE


# --- the model's features -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_stage_model():
    """32 px input -> 4 channels at 32 px -> 6 channels at 16 px -> 3 classes."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv32a")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv32b")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv16")(x)
    x = keras.layers.ReLU(name="relu16")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="dense")(x)
    return keras.Model(inputs, outputs, name="two_stage")


def test_feature_model_takes_mean_and_sd_of_the_last_layer_at_each_resolution(two_stage_model):
    import keras

    features = feature_model(two_stage_model)
    assert features.output_shape == (None, 2 * (4 + 6))  # conv32b (4 channels) and relu16 (6 channels)
    images = np.random.default_rng(3).integers(0, 256, size=(5, 32, 32, 1)).astype(np.float32)
    got = model_features(two_stage_model, images)
    assert got.shape == (5, 20) and got.dtype == np.float32
    inner = keras.Model(two_stage_model.inputs, [two_stage_model.get_layer("conv32b").output,
                                                 two_stage_model.get_layer("relu16").output])
    at32, at16 = (np.asarray(v, dtype=np.float64) for v in inner.predict(images, verbose=0))
    expected = np.concatenate([at32.mean(axis=(1, 2)), at32.std(axis=(1, 2)),
                               at16.mean(axis=(1, 2)), at16.std(axis=(1, 2))], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert (got[:, 4:8] >= 0).all() and not np.allclose(got[0], got[1])  # spreads; images differ


def test_feature_model_of_the_tiny_test_model(tiny_model):
    from covidxray.models import create_model

    model = create_model(tiny_model, num_classes=3, image_size=32, augment=True, seed=0)
    # the scaled input (1 channel, 32 px; after the augmentation) and the ReLU after the strided convolution
    # (8 channels, 15 px)
    assert feature_model(model).output_shape == (None, 2 * (1 + 8))
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 1)).astype(np.uint8)
    features = model_features(model, images)
    scaled = images.astype(np.float64) / 255
    np.testing.assert_allclose(features[:, 0], scaled.mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(features[:, 1], scaled.std(axis=(1, 2, 3)), rtol=1e-4)


def test_a_model_without_spatial_layers_is_an_error_naming_it():
    import keras

    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(8)(inputs)),
                        name="flat_one")
    with pytest.raises(CovidXrayError, match="model 'flat_one' has no spatial layer to take features from"):
        feature_model(model)


def test_fit_familiarity_on_a_model_flags_what_is_unlike_its_images(two_stage_model):
    rng = np.random.default_rng(5)

    def noise_images(n):
        return np.clip(rng.normal(100, 10, size=(n, 32, 32, 1)), 0, 255).astype(np.float32)

    familiarity = fit_familiarity(two_stage_model, noise_images(60), noise_images(40))
    assert familiarity.mean.shape == (20,) and familiarity.precision.shape == (20, 20)
    assert np.isfinite(familiarity.threshold) and familiarity.threshold > 0
    checkerboard = np.where((np.indices((32, 32)).sum(axis=0) % 2) == 0, 255.0, 0.0)[None, ..., None]
    flat = np.full((1, 32, 32, 1), 100.0)
    flags = familiarity.unlike(model_features(two_stage_model, np.concatenate([checkerboard, flat,
                                                                               noise_images(1)])))
    assert flags.tolist() == [True, True, False]
