"""covidxray.training.adversary: the gradient-reversal source head and training against it."""

import keras
import numpy as np
import pandas as pd
import pytest

from covidxray import rundir
from covidxray.config import Runtime, TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.models import load_model
from covidxray.training.adversary import (
    GradientReversal,
    conditional_source_loss,
    source_targets,
    with_source_head,
)
from covidxray.training.data import prepare_data
from covidxray.training.fit import build_model, fit
from helpers import cut_after_epoch, make_dataset


def _one_step(reversal_weight: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The change of a body weight and a head weight after one SGD step on the head's loss alone,
    with a GradientReversal of ``reversal_weight`` between them (None: none)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    body = keras.layers.Dense(3, name="body")
    head = keras.layers.Dense(2, activation="softmax", name="head")
    features = body(inputs)
    if reversal_weight is not None:
        features = GradientReversal(reversal_weight)(features)
    model = keras.Model(inputs, head(features))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    before = [body.kernel.numpy().copy(), head.kernel.numpy().copy()]
    x = np.random.default_rng(1).normal(size=(16, 4)).astype("float32")
    model.train_on_batch(x, np.arange(16) % 2)
    return body.kernel.numpy() - before[0], head.kernel.numpy() - before[1]


def test_gradient_reversal_is_the_identity_forward_and_flips_the_gradient_below_it():
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(GradientReversal(0.7)(x)), x, rtol=1e-6)
    plain_body, plain_head = _one_step(None)
    reversed_body, reversed_head = _one_step(0.5)
    assert np.abs(plain_body).max() > 1e-4
    np.testing.assert_allclose(reversed_head, plain_head, rtol=1e-4, atol=1e-7)  # the head learns as before
    np.testing.assert_allclose(reversed_body, -0.5 * plain_body, rtol=1e-3, atol=1e-7)  # the body the other way


def test_source_targets_pair_class_and_source():
    joint, names = source_targets(np.array([0, 0, 1, 2]), np.array(["b", "a", "b", "c"]))
    assert names == ["a", "b", "c"]
    assert joint.tolist() == [0 * 3 + 1, 0 * 3 + 0, 1 * 3 + 1, 2 * 3 + 2]


def test_the_source_loss_reads_the_row_of_the_true_class():
    rows = np.array([[[0.9, 0.1], [0.2, 0.8]],  # image 1: class 0 row, class 1 row
                     [[0.5, 0.5], [0.3, 0.7]]], dtype="float32")
    targets = np.array([1 * 2 + 0, 0 * 2 + 1])  # image 1: class 1, source 0; image 2: class 0, source 1
    loss = keras.ops.convert_to_numpy(conditional_source_loss(2)(targets, rows))
    np.testing.assert_allclose(loss, [-np.log(0.2), -np.log(0.5)], rtol=1e-5)


def test_the_training_model_shares_the_classifier_and_adds_a_source_output(tiny_model):
    model = build_model(TrainConfig(data="x", model=tiny_model, augment=False).resolve(), 8)
    trainer = with_source_head(model, num_sources=4, weight=0.1)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1)).astype("float32")
    outputs = trainer.predict_on_batch(x)
    assert outputs["source"].shape == (2, 3, 4)
    np.testing.assert_allclose(outputs["source"].sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(outputs["classes"], model.predict_on_batch(x), rtol=1e-5)
    assert {id(w) for w in model.weights} < {id(w) for w in trainer.weights}

    headless = keras.Model(model.inputs, keras.layers.Dense(3, name="out")(model.get_layer("predictions").input))
    with pytest.raises(CovidXrayError, match="no 'predictions' layer"):
        with_source_head(headless, 2, 0.1)


def _two_source_dataset(root):
    """The synthetic dataset with its images spread over two sources in every class."""
    root = make_dataset(root, per_class=8)
    manifest = pd.read_csv(root / "manifest.csv")
    manifest["source"] = ["site-a" if i % 4 < 2 else "site-b" for i in range(len(manifest))]  # patients stay whole
    manifest.to_csv(root / "manifest.csv", index=False)
    return root


def test_fit_against_a_source_head_saves_the_classifier_alone_and_resumes(tiny_model, tmp_path):
    config = TrainConfig(data=str(_two_source_dataset(tmp_path / "data")), model=tiny_model, epochs=2,
                         batch_size=8, patience=2, augment=False, source_adversary=0.5).resolve()
    data = prepare_data(config)
    assert set(data.table["source"]) == {"site-a", "site-b"}
    run = rundir.RunDir(tmp_path / "run")
    run.create()
    with cut_after_epoch(0):
        fit(config, data, run, verbose=0)
    info = fit(config, data, run, verbose=0)  # continues from the backup of the model with its head
    history = pd.read_csv(run.file(rundir.HISTORY))
    assert list(history["epoch"]) == [0, 1] and info["epochs_run"] == 2
    assert {"loss", "accuracy", "source_loss", "val_loss", "val_accuracy"} <= set(history.columns)
    assert np.isfinite(history["source_loss"]).all() and (history["source_loss"] > 0).all()
    saved = load_model(run.file(rundir.MODEL))
    assert saved.output.shape[-1] == 3 and not any(layer.name.startswith("source") for layer in saved.layers)


def test_the_source_head_changes_what_the_classifier_learns(tiny_model, tmp_path):
    data_dir = _two_source_dataset(tmp_path / "data")
    kernels = {}
    for weight in (0.0, 1.0):
        config = TrainConfig(data=str(data_dir), model=tiny_model, epochs=2, batch_size=8, patience=2,
                             augment=False, source_adversary=weight).resolve()
        run = rundir.RunDir(tmp_path / f"run-{weight}")
        run.create()
        fit(config, prepare_data(config), run, verbose=0)
        kernels[weight] = load_model(run.file(rundir.MODEL)).get_layer("tiny_conv").kernel.numpy()
    assert np.abs(kernels[1.0] - kernels[0.0]).max() > 1e-4


def test_source_adversary_refuses_what_it_cannot_train_on(monkeypatch):
    with pytest.raises(CovidXrayError, match="--source-adversary trains in one process"):
        Runtime(devices=2).check(TrainConfig(data="x", source_adversary=0.1))
    monkeypatch.setattr("covidxray.data.shards.shard_image_size", lambda data: 32)  # as for a shard folder
    with pytest.raises(CovidXrayError, match="not streamed from shards; give the dataset folders"):
        TrainConfig(data="shards", source_adversary=0.1).resolve()
    assert TrainConfig(data="shards").resolve().image_size == 32
