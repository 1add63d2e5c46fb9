"""covidxray.training.fit: building, compiling and fitting a model; the schedule, class weights and speed options."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

from covidxray import rundir
from covidxray.config import Runtime, TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.training.adversary import SourceAdversary
from covidxray.training.batches import ShuffledBatches
from covidxray.training.data import prepare_data
from covidxray.training.fit import (
    TwoStage,
    balanced_class_weights,
    build_model,
    fit,
    fit_arrays,
    handlers,
    source_balanced_weights,
    training_batches,
    training_weights,
)
from helpers import make_dataset


def test_mixed_precision_and_steps_per_execution_train():
    config = TrainConfig(data="unused", model="compactnet", image_size=32, epochs=2, batch_size=8).resolve()
    runtime = Runtime(mixed_precision="mixed_bfloat16", steps_per_execution=1 if keras.backend.backend() == "torch" else 2)
    images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 1), dtype=np.uint8)
    model = build_model(config, len(images), runtime)
    assert model.dtype_policy.name == "mixed_bfloat16"
    history = fit_arrays(model, images, np.arange(32) % 3, epochs=2, batch_size=8)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


COMPILED = r"""
import json
import numpy as np
import covidxray, keras
from covidxray.config import TrainConfig
from covidxray.training.fit import build_model, fit_arrays
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


def test_one_cycle_trains_adamw_with_decay_001_and_cosine_plain_adam(tiny_model):
    decayed = build_model(TrainConfig(data="x", model=tiny_model, lr_schedule="one-cycle").resolve(), 8)
    assert decayed.optimizer.weight_decay == pytest.approx(0.01)  # fastai's fit_one_cycle default
    assert build_model(TrainConfig(data="x", model=tiny_model).resolve(), 8).optimizer.weight_decay is None


def test_source_balanced_weights_give_every_source_of_a_class_the_same_share():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    sources = np.array(["a", "a", "a", "b", "a", "a", "a", "a", "c", "c"])
    weights = source_balanced_weights(y, sources)
    assert weights.mean() == pytest.approx(1.0)
    share = {(c, s): weights[(y == c) & (sources == s)].sum() for c, s in [(0, "a"), (0, "b"), (1, "a"), (1, "c")]}
    assert share == {k: pytest.approx(2.5) for k in share}  # 10 / (2 classes x 2 sources)
    assert weights[3] == pytest.approx(3 * weights[0])  # b's one covid image counts as a's three
    unweighted_classes = source_balanced_weights(y, sources, balance_classes=False)
    assert unweighted_classes[y == 0].sum() == pytest.approx(4) and unweighted_classes[y == 1].sum() == pytest.approx(6)


def test_training_weights_follow_the_settings():
    y, sources = np.array([0, 0, 1]), np.array(["a", "b", "a"])
    assert training_weights(TrainConfig(data="x").resolve(), y, sources) == {0: 0.75, 1: 1.5, 2: 1.0}
    assert training_weights(TrainConfig(data="x", class_weights=False), y, sources) is None
    per_image = training_weights(TrainConfig(data="x", balance_sources=True), y, sources)
    assert per_image.tolist() == pytest.approx([0.75, 0.75, 1.5])


def test_the_optional_parts_of_the_fit_are_the_handlers_the_config_asks_for():
    assert handlers(TrainConfig(data="x")) == []
    both = handlers(TrainConfig(data="x", head_epochs=2, source_adversary=0.3))
    assert [type(h) for h in both] == [TwoStage, SourceAdversary]  # stage one runs before the head is added
    assert both[1].weight == 0.3


def test_balanced_class_weights():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0), 2: 1.0}  # n / (classes present x count)


def test_training_batches_only_where_arrays_cannot_go_to_fit():
    config = TrainConfig(data="x", batch_size=4, seed=2)
    x, y = np.zeros((10, 4, 4, 1), np.uint8), np.arange(10) % 2
    assert training_batches(config, x, y, None, distributed=False) is None
    streamed = training_batches(config, list(x), y, {0: 1.0, 1: 2.0}, distributed=False)  # not an ndarray: shards
    assert isinstance(streamed, ShuffledBatches) and len(streamed) == 3 and streamed.batch_size == 4
    assert streamed.weights.tolist() == [1.0 if label == 0 else 2.0 for label in y]


def test_build_model_compiles_the_config(tiny_model, monkeypatch):
    config = TrainConfig(data="x", model=tiny_model, batch_size=4, epochs=2, learning_rate=0.02).resolve()
    model = build_model(config, 8)
    assert model.output_shape == (None, 3) and model.input_shape == (None, 32, 32, 1)
    assert model.loss == "sparse_categorical_crossentropy"
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.0)  # warm-up starts at 0
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(CovidXrayError, match="--steps-per-execution must be 1 with the PyTorch backend"):
        build_model(TrainConfig(data="x", model=tiny_model).resolve(), 8, Runtime(steps_per_execution=2))


def test_fit_saves_the_best_epoch_and_its_history(tiny_model, tmp_path):
    config = TrainConfig(data=str(make_dataset(tmp_path / "data", per_class=8)), model=tiny_model, epochs=3,
                         batch_size=8, patience=3, augment=False).resolve()
    data = prepare_data(config)
    run = rundir.RunDir(tmp_path / "run")
    run.create()
    info = fit(config, data, run, verbose=0)
    history = pd.read_csv(run.file(rundir.HISTORY))
    assert list(history["epoch"]) == [0, 1, 2] and info["epochs_run"] == 3 and info["devices"] == 1
    best = history["val_accuracy"].round(6).max()
    candidates = history[history["val_accuracy"].round(6) == best]
    assert info["best_epoch"] == int(candidates.loc[candidates["val_loss"].idxmin(), "epoch"]) + 1
    assert run.file(rundir.MODEL).is_file() and (run.file(rundir.BACKUP) / "state.json").is_file()
    assert info["train_images_per_second"] > 0


def test_fit_arrays_takes_one_weight_per_image(tiny_model):
    config = TrainConfig(data="x", model=tiny_model, augment=False).resolve()
    model = build_model(config, 8)
    x, y = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1)).astype(np.uint8), np.arange(8) % 3
    history = fit_arrays(model, x, y, epochs=1, batch_size=4, class_weight=np.zeros(8, np.float32))
    assert history.history["loss"] == [pytest.approx(0.0)]  # every image weighs nothing
    history = fit_arrays(model, x, y, epochs=1, batch_size=4, class_weight=np.ones(8, np.float32))
    assert history.history["loss"][0] > 0.1
