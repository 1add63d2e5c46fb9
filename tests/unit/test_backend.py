"""Build, save, load and predict on each Keras backend (each in its own process)."""

import json
import os
import subprocess
import sys

import pytest

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


def _backend_chosen_by_covidxray(keras_home, keras_json: dict | None = None) -> str:
    """KERAS_BACKEND as covidxray leaves it, in a fresh process with KERAS_BACKEND unset."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(keras_home)
    if keras_json is not None:
        (keras_home / "keras.json").write_text(json.dumps(keras_json))
    code = "import covidxray, os; print(os.environ.get('KERAS_BACKEND', 'unset'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize(
    "keras_json, expected",
    [
        (None, "tensorflow"),  # nothing chosen: the fastest installed backend
        ({"backend": "jax"}, "unset"),  # keras.json names an installed backend: Keras reads it itself
        ({"backend": "notinstalled"}, "tensorflow"),  # names a missing one: overridden
        ({"backend": "not.a.module"}, "tensorflow"),  # a dotted name must not crash the import
    ],
)
def test_default_backend(tmp_path, keras_json, expected):
    assert _backend_chosen_by_covidxray(tmp_path, keras_json) == expected


def test_the_default_backend_is_the_one_keras_uses(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)
    code = "import covidxray, keras; print(keras.backend.backend())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "tensorflow"


COMPILED = r"""
import json
import numpy as np
import covidxray, keras
from covidxray.config import TrainConfig
from covidxray.train import build_model, fit_arrays
config = TrainConfig(data="x", image_size=32, batch_size=4, epochs=1).resolve()
model = build_model(config, 8)
auto = bool(model.jit_compile)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)  # what a GPU gets
x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1)).astype("uint8")
fit_arrays(model, x, np.arange(8) % 3, epochs=1, batch_size=4)
print(json.dumps({"auto": auto, "forced": bool(model.jit_compile)}))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_training_is_compiled_where_the_backend_can(backend):
    """JAX compiles the training step with the augmentation in it (Keras's RandomZoom & co. turned
    compilation off for the whole model); TensorFlow, whose transform op XLA cannot compile, falls
    back to a graph instead of failing when XLA is asked for (as on a GPU)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", COMPILED], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if backend == "jax":
        assert result == {"auto": True, "forced": True}
    else:
        assert result == {"auto": False, "forced": False}
