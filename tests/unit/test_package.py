"""covidxray (the package): a light import and a curated, lazily loaded API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import covidxray

API = {
    "train": "covidxray.training.train", "resume": "covidxray.training.train", "cross_validate": "covidxray.training.cv",
    "probe": "covidxray.training.probe", "evaluate": "covidxray.evaluation.evaluate",
    "load_predictor": "covidxray.inference.predictor", "serve": "covidxray.web.app",
    "TrainConfig": "covidxray.config", "Calibration": "covidxray.inference.decision",
}


def test_each_name_is_the_function_of_its_module():
    import importlib

    for name, module in API.items():
        assert getattr(covidxray, name) is getattr(importlib.import_module(module), name), name
    assert set(API) <= set(covidxray.__all__) and set(covidxray.__all__) <= set(dir(covidxray))
    assert covidxray.__all__[0] == "__version__"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'covidxray' has no attribute 'nosuchthing'"):
        covidxray.nosuchthing  # noqa: B018


def test_importing_the_package_loads_no_keras_and_each_name_only_its_module():
    code = ("import sys, json, covidxray; before = 'keras' in sys.modules; covidxray.TrainConfig; "
            "after_config = 'keras' in sys.modules; covidxray.load_predictor; "
            "print(json.dumps([before, after_config, 'keras' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, False, False]
