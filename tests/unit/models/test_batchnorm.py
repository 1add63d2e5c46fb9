import keras
import numpy as np

from covidxray.models import create_model
from covidxray.models.batchnorm import batch_norm_layers, recalibrate_batch_norm, without_augmentation


def test_statistics_become_the_average_over_the_images():
    inputs = keras.Input((4, 4, 2))
    norm = keras.layers.BatchNormalization(name="bn")
    model = keras.Model(inputs, norm(inputs))
    images = np.random.default_rng(0).normal(3.0, 2.0, (96, 4, 4, 2)).astype("float32")
    assert recalibrate_batch_norm(model, images, batch_size=32) == 1
    batches = images.reshape(3, 32, 4, 4, 2)
    expected_mean = batches.mean(axis=(1, 2, 3)).mean(axis=0)
    expected_var = batches.var(axis=(1, 2, 3)).mean(axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.moving_mean), expected_mean, rtol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.moving_variance), expected_var, rtol=1e-3)
    assert norm.momentum == 0.99  # restored


def test_augmentation_is_skipped_and_weights_are_untouched():
    model = create_model("compactnet", num_classes=3, image_size=48, seed=0)
    assert "augmentation" not in [layer.name for layer in without_augmentation(model).layers]
    trainable = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    images = np.random.default_rng(1).integers(0, 256, (40, 48, 48, 1)).astype("uint8")
    before = model.predict(images.astype("float32"), verbose=0)
    assert recalibrate_batch_norm(model, images) == len(batch_norm_layers(model)) > 10
    for old, new in zip(trainable, model.trainable_weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    assert not np.allclose(before, model.predict(images.astype("float32"), verbose=0))


def test_nested_models_are_searched():
    inner = keras.Sequential([keras.layers.Dense(3), keras.layers.BatchNormalization()])
    outer = keras.Sequential([keras.Input((2,)), inner, keras.layers.BatchNormalization()])
    assert len(batch_norm_layers(outer)) == 2
