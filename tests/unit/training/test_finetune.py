"""Two-stage fine-tuning (--head-epochs): the head alone on a frozen backbone, then the backbone's top."""

import keras
import numpy as np
import pandas as pd
import pytest

from covidxray.config import DEFAULT_HEAD_EPOCHS, TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.models import MODELS, ModelSpec
from covidxray.models.finetune import backbone_of
from covidxray.training.fit import build_model, fit_arrays, train_head
from covidxray.training.train import train
from helpers import cut_after_epoch


def tiny_backbone_body(x, num_classes: int, *, weights=None):
    """A pretrained-backbone body in miniature: a nested model (bottom, batch norm, top) and a head."""
    inputs = keras.Input(tuple(x.shape[1:]))
    h = keras.layers.Conv2D(4, 3, name="bottom_conv")(inputs)
    h = keras.layers.BatchNormalization(name="bottom_bn")(h)
    h = keras.layers.Conv2D(4, 3, activation="relu", name="top_conv")(keras.layers.ReLU()(h))
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h), name="backbone")
    if weights is not None:
        backbone.load_weights(weights)
    x = keras.layers.Dropout(0.2, name="dropout")(backbone(x))  # as the real bodies (Grad-CAM cuts the model here)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)


@pytest.fixture
def pretrained(monkeypatch, tmp_path):
    """``tinyback``, a registered backbone model, and a file of 'pretrained' backbone weights for it."""
    monkeypatch.setitem(MODELS, "tinyback", ModelSpec(tiny_backbone_body, 32, True, imagenet_weights=True))
    model = keras.Model(*(lambda i: (i, tiny_backbone_body(i, 3)))(keras.Input((32, 32, 1))))
    path = tmp_path / "backbone.weights.h5"
    backbone_of(model).save_weights(path)
    return str(path)


def values(layer) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]


def changed(before, after) -> bool:
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_stage_one_trains_the_head_alone_and_stage_two_the_top_of_the_backbone(pretrained):
    config = TrainConfig(data="unused", model="tinyback", weights=pretrained, epochs=2, batch_size=8,
                         learning_rate=0.05, augment=False).resolve()
    assert config.head_epochs == DEFAULT_HEAD_EPOCHS  # pretrained weights on a backbone: two stages by default
    config = TrainConfig(**{**config.__dict__, "head_epochs": 2})
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (16, 32, 32, 1), dtype=np.uint8), np.arange(16) % 3
    model = build_model(config, len(x))
    backbone = backbone_of(model)
    names = ("bottom_conv", "bottom_bn", "top_conv")
    start = {name: values(backbone.get_layer(name)) for name in names}
    head = values(model.get_layer("predictions"))

    train_head(model, config, x, y, None, None, len(x), verbose=0)
    after_one = {name: values(backbone.get_layer(name)) for name in names}
    assert not any(changed(start[n], after_one[n]) for n in names)  # the frozen backbone, batch norm stats too
    assert changed(head, values(model.get_layer("predictions")))
    assert backbone.get_layer("top_conv").trainable and not backbone.get_layer("bottom_conv").trainable

    fit_arrays(model, x, y, epochs=2, batch_size=8)  # stage two, as fit runs it
    after_two = {name: values(backbone.get_layer(name)) for name in names}
    assert changed(after_one["top_conv"], after_two["top_conv"])
    assert not changed(after_one["bottom_conv"], after_two["bottom_conv"])
    assert not changed(after_one["bottom_bn"], after_two["bottom_bn"])  # batch norm stays frozen
    assert float(model.optimizer.learning_rate) <= config.learning_rate * 0.1  # a tenth of the rate, decaying


def test_a_run_fine_tunes_in_two_stages_and_keeps_the_second_in_its_history(pretrained, dataset, tmp_path,
                                                                            fast_bootstrap):
    config = TrainConfig(data=str(dataset), model="tinyback", weights=pretrained, head_epochs=1, epochs=2,
                         batch_size=8, augment=False)
    metrics = train(config, tmp_path / "run", verbose=0)
    assert metrics["run"]["epochs_run"] == 2
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 2
    assert TrainConfig.load(tmp_path / "run" / "config.json").head_epochs == 1


def test_one_stage_without_pretrained_weights_and_clear_errors_for_head_epochs_without_them(pretrained):
    assert TrainConfig(data="x", model="tinyback").resolve().head_epochs == 0
    assert TrainConfig(data="x", model="compactnet", weights=pretrained).resolve().head_epochs == 0
    assert TrainConfig(data="x", model="tinyback", weights=pretrained, head_epochs=0).resolve().head_epochs == 0
    older = TrainConfig.from_dict({"data": "x", "model": "tinyback", "weights": pretrained})  # a run of before
    assert older.resolve().head_epochs == 0  # trained in one stage, and resumes so
    with pytest.raises(CovidXrayError, match="model 'compactnet' has none"):
        TrainConfig(data="x", model="compactnet", weights=pretrained, head_epochs=2).resolve()
    with pytest.raises(CovidXrayError, match="--head-epochs fine-tunes pretrained weights"):
        TrainConfig(data="x", model="tinyback", head_epochs=2).resolve()


def test_a_run_cut_short_in_stage_two_resumes_there_without_stage_one(pretrained, dataset, tmp_path, monkeypatch,
                                                                      fast_bootstrap):
    import covidxray.training.fit as fit_module
    from covidxray.training.train import resume

    config = TrainConfig(data=str(dataset), model="tinyback", weights=pretrained, head_epochs=1, epochs=2,
                         batch_size=8, augment=False)
    heads = []
    original_head = fit_module.train_head
    monkeypatch.setattr(fit_module, "train_head", lambda *a, **k: (heads.append(1), original_head(*a, **k)))
    with cut_after_epoch(0):
        train(config, tmp_path / "run", verbose=0)
    assert heads == [1]
    metrics = resume(tmp_path / "run", verbose=0)  # the backup of stage two loads into the stage-two model
    assert heads == [1] and metrics["run"]["resumed"]
    assert list(pd.read_csv(tmp_path / "run" / "history.csv")["epoch"]) == [0, 1]
