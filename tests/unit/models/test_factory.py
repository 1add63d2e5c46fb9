"""covidxray.models.factory: create_model over the registry (weights, augmentation, dtype policy) and load_model."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from covidxray.errors import CovidXrayError
from covidxray.models import MODELS, create_model, list_models, load_model
from covidxray.models.augment import RandomAffine


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


def test_mixed_precision_model_computes_in_bfloat16_and_returns_float32():
    model = create_model("darkcovidnet", num_classes=3, image_size=32, dtype_policy="mixed_bfloat16")
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.get_layer("conv1").kernel.dtype == "float32"  # weights stay float32
    probabilities = model.predict(np.full((2, 32, 32, 1), 100, dtype="float32"), verbose=0)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-2)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    assert create_model("compactnet", num_classes=3, image_size=32).get_layer("stem_conv").compute_dtype == "float32"


def test_load_model_reads_a_saved_model_without_its_optimizer(tmp_path):
    model = create_model("compactnet", num_classes=2, image_size=32, seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert getattr(loaded, "optimizer", None) is None  # not compiled: no optimizer state
    # covidxray's own layers come back as themselves, with their settings
    (affine,) = [layer for layer in loaded.get_layer("augmentation").layers if isinstance(layer, RandomAffine)]
    assert (affine.rotation, affine.zoom, affine.shift) == (5.0, 0.1, 0.05)
    with pytest.raises(CovidXrayError, match="missing.keras: missing; is .* a finished covidxray run"):
        load_model(tmp_path / "missing.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a keras archive")
    with pytest.raises(CovidXrayError, match="broken.keras: cannot load the model .*; retrain the run"):
        load_model(tmp_path / "broken.keras")


SCRIPT = r"""
import json, sys
import numpy as np
import covidxray, keras
from covidxray.models import create_model
from covidxray.models.batchnorm import recalibrate_batch_norm
out = {"backend": keras.backend.backend()}
images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 1)).astype("float32")
for name in ("compactnet", "darkcovidnet"):
    model = create_model(name, num_classes=3, image_size=64, seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, np.array([0, 1, 2]), epochs=1, verbose=0)
    recalibrate_batch_norm(model, images)
    first_conv, first_bn = {"compactnet": ("stem_conv", "stem_bn"), "darkcovidnet": ("conv1", "conv1_bn")}[name]
    features = keras.Model(model.get_layer("scale").input, model.get_layer(first_conv).output).predict(images, verbose=0)
    moving = keras.ops.convert_to_numpy(model.get_layer(first_bn).moving_mean)
    bn_error = float(np.abs(moving - features.mean(axis=(0, 1, 2))).max() / (np.abs(features).mean() + 1e-9))
    before = model.predict(images, verbose=0)
    path = f"{sys.argv[1]}/{name}.keras"
    model.save(path)
    after = keras.saving.load_model(path, compile=False).predict(images, verbose=0)
    out[name] = {"max_diff": float(np.abs(before - after).max()), "sums": before.sum(axis=1).tolist(),
                 "bn_error": bn_error}
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_build_save_load_predict(backend, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    for name in ("compactnet", "darkcovidnet"):
        assert result[name]["max_diff"] < 1e-5
        assert all(abs(s - 1) < 1e-4 for s in result[name]["sums"])
        assert result[name]["bn_error"] < 1e-3  # precise BN: moving mean = mean of the layer's input


def test_a_body_without_its_predictions_layer_is_refused_as_it_is_built():
    from covidxray.models.registry import MODELS, ModelSpec, register_model

    def unnamed(x, num_classes):
        return keras.layers.Dense(num_classes, activation="softmax")(keras.layers.Flatten()(x))

    register_model("unnamed", ModelSpec(unnamed, 16, True))
    try:
        with pytest.raises(CovidXrayError, match="model 'unnamed': its body must end in a Dense layer named 'predictions'"):
            create_model("unnamed", num_classes=2, augment=False)
    finally:
        MODELS.pop("unnamed")
