"""covidxray.inference.predictor: load_predictor reads a run (or a preset) once, checked against its files."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from covidxray.errors import CovidXrayError
from covidxray.inference.decision import Calibration
from covidxray.inference.engines import OnnxEngine
from covidxray.inference.predictor import Predictor, load_predictor
from covidxray.presets import DEFAULT_PRESET, preset_dir
from helpers import build_run, gray


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("predictor") / "run", image_size=32, task="binary")


def test_load_predictor_reads_the_runs_classes_size_and_rule(run, tmp_path):
    predictor = load_predictor(run)
    assert isinstance(predictor, Predictor) and predictor.engine.name == "keras" and predictor.path == run
    assert predictor.classes == ("covid", "normal") and predictor.image_size == 32
    assert predictor.calibration == Calibration()  # no calibration.json
    assert predictor.model.output_shape == (None, 2)
    images = np.stack([gray(i, (32, 32)) for i in range(5)])[..., None]
    raw = predictor.predict_raw(images)
    assert raw.shape == (5, 2)
    calibrated = shutil.copytree(run, tmp_path / "calibrated")
    (calibrated / "calibration.json").write_text(json.dumps({"temperature": 3.0, "covid_threshold": 0.0}))
    scaled = load_predictor(str(calibrated))
    assert scaled.calibration == Calibration(3.0, 0.0)
    probabilities, decided = scaled.predict(images)
    np.testing.assert_allclose(probabilities, Calibration(3.0).apply(raw), atol=1e-6)
    assert decided.tolist() == [0] * 5  # a threshold of 0 calls every image covid


def test_tta_averages_views_drawn_with_the_runs_seed_and_is_checked(run):
    from covidxray.inference.engines import predict_augmented

    predictor = load_predictor(run, tta=3)
    assert predictor.tta == 3
    images = np.stack([gray(i, (32, 32)) for i in range(4)])[..., None]
    expected = predict_augmented(predictor.model, images, 3, seed=predictor.config.seed)
    np.testing.assert_allclose(predictor.predict_raw(images), expected, atol=1e-6)
    assert np.abs(expected - load_predictor(run).predict_raw(images)).max() > 1e-4
    for views in (0, -2, 2.5, 33, True):
        with pytest.raises(CovidXrayError, match=r"--tta must be a whole number of views from 1 \(none\) to 32"):
            load_predictor(run, tta=views)
    plain = load_predictor(run)
    with pytest.raises(CovidXrayError, match="--tta needs the Keras model.*drop --engine onnxruntime"):
        Predictor(OnnxEngine(plain.model), plain.config, plain.calibration, plain.path, tta=2)
    with pytest.raises(CovidXrayError, match="--tta needs the Keras model.*drop --engine onnxruntime"):
        load_predictor(run, engine="onnxruntime", tta=2)  # before the model loads: the run has no model.onnx


def test_outputs_that_do_not_match_the_classes_are_refused(run, tmp_path):
    mismatched = shutil.copytree(run, tmp_path / "mismatched")
    config = json.loads((mismatched / "config.json").read_text())
    config.update(task="three-class", classes=["covid", "normal", "pneumonia"])
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(CovidXrayError, match="the model has 2 outputs but .*config.json names 3 classes; retrain"):
        load_predictor(mismatched)


def test_bad_arguments_are_clear_errors(run, tmp_path):
    with pytest.raises(CovidXrayError, match="unknown engine 'tensorrt'; choose one of: keras, onnxruntime"):
        load_predictor(run, engine="tensorrt")
    with pytest.raises(CovidXrayError, match="either --run or --preset"):
        load_predictor(run, preset=DEFAULT_PRESET)
    with pytest.raises(CovidXrayError, match="model.onnx"):
        load_predictor(run, engine="onnxruntime")  # not exported
    with pytest.raises(CovidXrayError, match="config.json: missing"):
        load_predictor(tmp_path)


def test_the_default_is_the_shipped_preset():
    predictor = load_predictor()
    assert predictor.path == preset_dir(DEFAULT_PRESET)
    assert load_predictor(f"preset:{DEFAULT_PRESET}").path == load_predictor(preset=DEFAULT_PRESET).path == predictor.path
    assert predictor.classes == ("covid", "normal", "pneumonia")
    assert predictor.calibration == Calibration.load(predictor.path) and predictor.calibration != Calibration()


def test_an_image_size_that_does_not_match_the_model_is_refused(run, tmp_path):
    mismatched = shutil.copytree(run, tmp_path / "mismatched")
    config = json.loads((mismatched / "config.json").read_text())
    config.update(image_size=64)  # valid in itself: only the model says it is wrong
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(CovidXrayError, match=r"model.keras: the model takes 32x32px images but .*config.json says "
                                             r"image_size 64; retrain the run"):
        load_predictor(mismatched)


@pytest.mark.parametrize("config, message", [
    ([], "not a covidxray run configuration"),
    ({"image_size": "32"}, "image_size must be int"),
    ({"image_size": 4}, "--image-size must be in"),
    ({"image_size": None}, "no image_size"),
    ({"classes": ["covid", "normal", "pneumonia"]}, "are not those of the task binary"),
])
def test_a_broken_config_json_is_refused_before_the_model_is_used(run, tmp_path, config, message):
    broken = shutil.copytree(run, tmp_path / "broken")
    values = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config if isinstance(config, list) else {**values, **config}))
    with pytest.raises(CovidXrayError, match=message):
        load_predictor(broken)


@pytest.mark.parametrize("intensity", ["none", None, "clahe"])
def test_a_run_of_before_intensity_harmonisation_was_removed(run, tmp_path, intensity):
    older = shutil.copytree(run, tmp_path / "older")
    values = json.loads((older / "config.json").read_text())
    (older / "config.json").write_text(json.dumps({**values, "intensity": intensity}))
    if intensity == "clahe":  # its model was trained on other pixels than it would now be given
        with pytest.raises(CovidXrayError, match=r"^" + re.escape(f"{older / 'config.json'}: this run was trained with "
                           "intensity harmonisation (--intensity clahe), which was removed from covidxray (git history "
                           "keeps it, in the commits before its removal); retrain the run without it") + "$"):
            load_predictor(older)
        return
    images = np.stack([gray(i, (32, 32)) for i in range(3)])[..., None]
    predictor = load_predictor(older)
    assert predictor.preprocessing.settings() == {"lungs": "none"}
    np.testing.assert_allclose(predictor.predict_raw(images), load_predictor(run).predict_raw(images), atol=1e-6)
