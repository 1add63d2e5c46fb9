"""Data-parallel training (Keras distribution API, JAX): two virtual CPU devices against one."""

import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

from covidxray.errors import CovidXrayError
from covidxray.training.distribute import data_parallel
from helpers import make_dataset

# Runs in a fresh process with two virtual CPU devices: trains the same seed, data and global
# batch once on a one-device mesh and once on a two-device mesh, and reports both.
SCRIPT = r"""
import json, sys
import keras, numpy as np
import covidxray.training.fit as fit
from covidxray.config import Runtime, TrainConfig
from covidxray.inference.engines import predict_arrays
from covidxray.models import ModelSpec, create_model, load_model, register_model
from covidxray.rundir import RunDir
from covidxray.training.callbacks import PreciseValidation
from covidxray.training.data import prepare_data
from covidxray.training.distribute import data_parallel

def tiny(x, num_classes):  # compiles in seconds; batch norm makes the devices share batch statistics
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
register_model("tiny", ModelSpec(tiny, 32, True))

seen = []  # (devices of the distribution in force, devices holding a weight, devices a batch is split over)
class Spy(PreciseValidation):
    def on_epoch_end(self, epoch, logs=None):
        distribution = keras.distribution.distribution()
        layout = distribution.get_data_layout((8, 32, 32, 1)).backend_layout
        weight = self.model.trainable_variables[0].value
        seen.append([int(distribution.device_mesh.devices.size), len(weight.sharding.device_set),
                     int(np.prod([layout.mesh.shape[a] for a in layout.spec[0:1] if a]))])
        super().on_epoch_end(epoch, logs)
fit.PreciseValidation = Spy  # the name fit() builds its callback from

errors = []
for batch, devices in ((9, 2), (8, 3)):
    try:
        data_parallel(batch, devices)
    except Exception as error:
        errors.append(str(error))

out = {"errors": errors, "runs": {}}
config = TrainConfig(data=sys.argv[1], model="tiny", epochs=2, batch_size=8, seed=3, augment=True).resolve()
for devices in (1, 2):
    data = prepare_data(config)
    run = RunDir(f"{sys.argv[2]}/run{devices}")
    run.create()
    seen.clear()
    # --devices 1 trains without a mesh (another input pipeline); the reference is a one-device mesh
    fit.data_parallel = lambda batch, asked, n=devices: data_parallel(batch, n)
    info = fit.fit(config, data, run, Runtime(devices=2), verbose=0)
    model = load_model(run.file("model.keras"))
    keras.utils.set_random_seed(config.seed)  # the initial weights, as fit() draws them
    initial = create_model("tiny", num_classes=3, seed=config.seed).get_weights()
    x, _ = data.part("test")
    out["runs"][devices] = {
        "info": info, "seen": list(seen),
        "history": run.file("history.csv").read_text(),
        "weights": [w.tolist() for w in model.get_weights()],
        "moved": max(float(np.abs(w - w0).max()) for w, w0 in zip(model.get_weights(), initial)),
        "probabilities": predict_arrays(model, x).tolist(),
    }
print(json.dumps(out))
"""


def test_data_parallel_two_devices_matches_one(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=16)
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = result["runs"]["1"], result["runs"]["2"]
    assert one["info"]["devices"] == 1 and two["info"]["devices"] == 2
    # During training: the distribution spans two devices, every weight is on both, a batch is split over both.
    assert two["seen"] == [[2, 2, 2]] * 2
    assert one["seen"] == [[1, 1, 1]] * 2
    # Same seed, data and global batch of 8: the two-device run must repeat the one-device run.
    # They differ only in the order of float32 sums (each device sums its half-batch, then the
    # halves are added), about 1e-7 relative per step; over these 10 Adam steps that grew to
    # ~1e-5 at most (measured). A real difference (a device stepping on its own half-batch, batch
    # norm on half-batch statistics, other images) changes the gradients' direction, and Adam
    # moves every weight by about the learning rate, 1e-3, per step: 1e-4 lies between the two.
    assert one["moved"] > 1e-3 and two["moved"] > 1e-3  # training moved the weights well beyond the tolerance
    for a, b in zip(one["weights"], two["weights"]):
        assert np.allclose(a, b, rtol=0, atol=1e-4)
    assert np.allclose(one["probabilities"], two["probabilities"], rtol=0, atol=1e-4)
    history_one, history_two = (pd.read_csv(io.StringIO(r["history"])) for r in (one, two))
    assert len(history_one) == 2
    assert np.allclose(history_one.to_numpy(), history_two.to_numpy(), rtol=1e-4, atol=1e-5)
    assert "does not split evenly over 2 devices" in result["errors"][0]
    assert "--devices 3: only 2 device(s) visible" in result["errors"][1]


def test_data_parallel_needs_jax(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(CovidXrayError, match="needs the JAX backend, not torch; run with KERAS_BACKEND=jax"):
        data_parallel(32)
