import keras
import numpy as np
import pytest

from covidxray.errors import CovidXrayError
from covidxray.models import DEFAULT_MODEL, MODELS, create_model, list_models


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(CovidXrayError) as error:
        create_model("resnet9000", num_classes=3)
    for name in list_models():
        assert name in str(error.value)


def test_darkcovidnet_matches_the_paper():
    model = create_model("darkcovidnet", num_classes=3)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    leaky = [layer for layer in model.layers if isinstance(layer, keras.layers.LeakyReLU)]
    assert model.input_shape == (None, 256, 256, 1)
    assert len(convs) == 17
    assert len(leaky) == 17
    assert 1.10e6 < model.count_params() < 1.20e6
    assert model.output_shape == (None, 3)


def test_default_model_is_registered_and_small():
    assert DEFAULT_MODEL in MODELS
    model = create_model(num_classes=2)
    assert model.count_params() < 2e6
    assert model.output_shape == (None, 2)


@pytest.mark.parametrize("name", list_models())
def test_every_model_gives_probabilities(name):
    size = 64 if MODELS[name].scaled_input else 32 * 3
    model = create_model(name, num_classes=3, image_size=size)
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 1)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_augmentation_acts_only_in_training():
    model = create_model("compactnet", num_classes=2, image_size=48, seed=1)
    augmentation = model.get_layer("augmentation")
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 1)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmentation(images, training=False)), images)
    assert not np.allclose(keras.ops.convert_to_numpy(augmentation(images, training=True)), images)
    assert not any(isinstance(layer, keras.layers.RandomFlip) for layer in augmentation.layers)
    flipping = create_model("compactnet", num_classes=2, image_size=48, flip=True).get_layer("augmentation")
    assert any(isinstance(layer, keras.layers.RandomFlip) for layer in flipping.layers)


def test_weights_from_a_file_are_loaded(tmp_path):
    source = create_model("compactnet", num_classes=2, image_size=48, seed=1)
    path = tmp_path / "start.weights.h5"
    source.save_weights(path)
    loaded = create_model("compactnet", num_classes=2, image_size=48, weights=str(path), seed=2)
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(images, training=False)),
        keras.ops.convert_to_numpy(source(images, training=False)), atol=1e-6
    )


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras warns before it raises
def test_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(CovidXrayError, match="no such weights file"):
        create_model("compactnet", num_classes=2, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(CovidXrayError, match="no ImageNet weights"):
        create_model("darkcovidnet", num_classes=2, weights="imagenet")
    other = create_model("darkcovidnet", num_classes=3, image_size=64)
    path = tmp_path / "dark.weights.h5"
    other.save_weights(path)
    with pytest.raises(CovidXrayError, match="do not fit"):
        create_model("compactnet", num_classes=2, image_size=64, weights=str(path))


def test_augmentation_changes_what_fit_learns():
    images = np.random.default_rng(0).integers(0, 256, (64, 48, 48, 1)).astype("float32")
    labels = np.arange(64) % 3
    kernels = {}
    for augment in (True, False):
        keras.utils.set_random_seed(0)
        model = create_model("compactnet", num_classes=3, image_size=48, augment=augment, seed=0)
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(images, labels, epochs=1, batch_size=32, verbose=0, shuffle=False)
        kernels[augment] = keras.ops.convert_to_numpy(model.get_layer("stem_conv").kernel)
    assert not np.allclose(kernels[True], kernels[False])


def test_backbone_weights_from_a_file(tmp_path):
    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(96, 96, 3),
                                                   pooling="avg")
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    model = create_model("mobilenet_v3_small", num_classes=2, image_size=96, weights=str(path))
    loaded = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for expected, actual in zip(backbone.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(expected), keras.ops.convert_to_numpy(actual))
