import keras
import numpy as np

from covidxray.models import create_model
from covidxray.models.batchnorm import (
    BatchNormalization,
    batch_norm_layers,
    recalibrate_batch_norm,
    without_augmentation,
)
from covidxray.models.factory import load_model


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


def _pair(channels=4):
    """Keras's layer and covidxray's, with the same (non-trivial) weights."""
    pair = keras.layers.BatchNormalization(momentum=0.9), BatchNormalization(momentum=0.9)
    for layer in pair:
        layer.build((None, 5, 6, channels))
        layer.gamma.assign(np.arange(1, channels + 1, dtype="float32"))
        layer.beta.assign(np.full(channels, 0.5, dtype="float32"))
    return pair


def test_the_fused_layer_computes_what_keras_computes():
    x = np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 6, 4)).astype("float32")
    keras_bn, ours = _pair()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x, training=True)),
                               keras.ops.convert_to_numpy(keras_bn(x, training=True)), atol=1e-5)
    for name in ("moving_mean", "moving_variance"):  # Keras's rule: the biased batch variance
        np.testing.assert_allclose(keras.ops.convert_to_numpy(getattr(ours, name)),
                                   keras.ops.convert_to_numpy(getattr(keras_bn, name)), rtol=1e-5)
    assert not np.allclose(keras.ops.convert_to_numpy(ours.moving_variance), 1.0)  # they did move
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(keras_bn(x)), atol=1e-5)


def test_the_fused_layer_has_keras_gradients():
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(1).normal(0.0, 2.0, (6, 4, 4, 3)).astype("float32"))
    weights = np.random.default_rng(2).normal(size=(6, 4, 4, 3)).astype("float32")
    grads = []
    for layer in _pair(3):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * weights)
        grads.append([g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])])
    for expected, got in zip(*grads):
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_under_mixed_bfloat16_normalisation_is_float32_and_the_output_bfloat16():
    layer = BatchNormalization(dtype="mixed_bfloat16")
    out = layer(np.random.default_rng(3).normal(size=(4, 3, 3, 2)).astype("float32"), training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert layer.moving_variance.dtype == "float32"


def test_models_use_it_and_it_saves_and_loads(tmp_path):
    model = create_model("darkcovidnet", num_classes=3, image_size=32, seed=0)
    assert all(type(layer) is BatchNormalization for layer in batch_norm_layers(model))
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert all(type(layer) is BatchNormalization for layer in batch_norm_layers(loaded))
    images = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
