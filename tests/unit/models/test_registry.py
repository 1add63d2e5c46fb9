"""covidxray.models.registry: the models by name, without Keras."""

import json
import subprocess
import sys

import pytest

from covidxray.errors import CovidXrayError
from covidxray.models import DEFAULT_MODEL, MODELS, ModelSpec, create_model, list_models, model_spec, register_model


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(CovidXrayError) as error:
        create_model("resnet9000", num_classes=3)
    for name in list_models():
        assert name in str(error.value)


def test_model_spec_names_the_known_ones():
    assert model_spec("darkcovidnet").image_size == 256 and model_spec(DEFAULT_MODEL) is MODELS[DEFAULT_MODEL]
    with pytest.raises(CovidXrayError) as error:
        model_spec("resnet9000")
    assert str(error.value) == f"unknown model 'resnet9000'; choose one of: {', '.join(list_models())}"


def test_the_registry_lists_every_model_sorted():
    assert list_models() == sorted(MODELS) == [
        "compactnet", "darkcovidnet", "densenet121", "densenet121_xrv", "efficientnet_b0", "efficientnet_lite0",
        "mobilenet_v3_small"]
    assert [name for name in list_models() if MODELS[name].imagenet_weights] == [
        "densenet121", "densenet121_xrv", "efficientnet_b0", "efficientnet_lite0", "mobilenet_v3_small"]
    assert all(MODELS[name].description for name in list_models())


def test_register_model_and_bound_options(monkeypatch):
    calls = []

    def body(x, num_classes, **options):
        calls.append((num_classes, options))
        return x

    monkeypatch.setitem(MODELS, "probe-body", MODELS["compactnet"])  # restored after the test
    register_model("probe-body", ModelSpec(body, 48, True, options=(("width", "8"),)))
    assert "probe-body" in list_models() and model_spec("probe-body").image_size == 48
    model_spec("probe-body").build_body()("x", 3, weights=None)
    assert calls == [(3, {"width": "8", "weights": None})]
    by_path = ModelSpec("covidxray.models.compact:compactnet", 160, True)
    from covidxray.models.compact import compactnet

    assert by_path.build_body() is compactnet  # imported when built


def test_importing_the_registry_does_not_import_keras():
    code = ("import sys, json, covidxray.models; covidxray.models.list_models(); covidxray.models.model_spec('compactnet'); "
            "print(json.dumps(sorted(m for m in ('keras', 'tensorflow', 'torch', 'jax') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
