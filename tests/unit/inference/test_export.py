"""covidxray.inference.export: the inference model as ONNX (every backend) or SavedModel, run by ONNX Runtime."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from covidxray import rundir
from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.inference.engines import METADATA_KEY, OnnxEngine, OnnxModel
from covidxray.inference.export import export_run
from covidxray.models import load_model
from helpers import build_run, gray


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("export") / "run", task="binary")


def test_export_run_writes_onnx_with_its_classes_and_size(run, tmp_path):
    pytest.importorskip("onnxruntime")
    assert export_run(run) == run / "model.onnx"
    exported = OnnxEngine.load(rundir.RunDir(run), TrainConfig.load(run / "config.json")).model
    assert exported.classes == ("covid", "normal") and exported.image_size == 32 and exported.output_shape == (None, 2)
    images = np.stack([gray(i, (32, 32)) for i in range(5)])[..., None].astype("float32")
    expected = load_model(run / "model.keras").predict(images, verbose=0)
    np.testing.assert_allclose(exported.predict(images, batch_size=2), expected, atol=1e-4)
    assert exported.predict(images[:0]).shape == (0, 2)
    elsewhere = export_run(str(run), "onnx", tmp_path / "deep" / "m.onnx")
    np.testing.assert_allclose(OnnxModel(elsewhere).predict(images), expected, atol=1e-4)


def test_export_errors_name_the_fix(run, tmp_path):
    with pytest.raises(CovidXrayError, match="unknown export format 'tflite'; choose one of: onnx, savedmodel"):
        export_run(run, "tflite")
    with pytest.raises(CovidXrayError, match="missing; export the run first with covidxray export --run"):
        OnnxEngine.load(rundir.RunDir(tmp_path), None)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(CovidXrayError, match="bad.onnx: not an ONNX model exported by covidxray"):
        OnnxModel(tmp_path / "bad.onnx")


def test_an_onnx_export_of_a_run_that_harmonised_its_intensities_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    def exported(name: str, preprocessing: dict):
        """An ONNX model (the identity on two values) with covidxray's metadata, as an older export wrote it."""
        graph = helper.make_graph([helper.make_node("Identity", ["image"], ["probabilities"])], "identity",
                                  [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 2])],
                                  [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps({"classes": ["covid", "normal"], "image_size": 2,
                                                           "preprocessing": preprocessing})
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    older = OnnxModel(exported("none.onnx", {"lungs": "crop", "intensity": "none", "decode_side": 4}))
    assert older.classes == ("covid", "normal") and older.image_size == 2
    np.testing.assert_allclose(older.predict(np.ones((3, 2))), np.ones((3, 2)))
    harmonised = exported("clahe.onnx", {"lungs": "none", "intensity": "clahe", "decode_side": 2})
    with pytest.raises(CovidXrayError, match=f"^{re.escape(str(harmonised))}: this run was trained with intensity "
                       r"harmonisation \(--intensity clahe\), which was removed from covidxray"):
        OnnxModel(harmonised)
    masked = exported("mask.onnx", {"lungs": "mask", "decode_side": 4})
    with pytest.raises(CovidXrayError, match=f"^{re.escape(str(masked))}: this run was trained with every pixel "
                       r"outside the lungs set to 0 \(--lungs mask\), which was removed from covidxray"):
        OnnxModel(masked)


BACKEND_SCRIPT = r"""
import json, sys
import numpy as np
import covidxray, keras
from covidxray.errors import CovidXrayError
from covidxray.inference.engines import OnnxModel
from covidxray.inference.export import export_model
from covidxray.models import create_model
model = create_model("darkcovidnet", num_classes=3, image_size=32, seed=0)
images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 1)).astype("float32")
try:
    export_model(model, "onnx", sys.argv[1], ("covid", "normal", "pneumonia"), 32)
except CovidXrayError as error:
    print(json.dumps({"backend": keras.backend.backend(), "error": str(error)}))
    sys.exit(0)
diff = np.abs(OnnxModel(sys.argv[1]).predict(images) - model.predict(images, verbose=0)).max()
print(json.dumps({"backend": keras.backend.backend(), "max_diff": float(diff)}))
"""


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_onnx_export_on_other_backends(backend, tmp_path):
    """PyTorch exports through torch.onnx; JAX needs jax2onnx, which the [onnx] extra leaves out (heavy)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT, str(tmp_path / "m.onnx")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    if backend == "jax" and importlib.util.find_spec("jax2onnx") is None:
        assert "pip install jax2onnx" in result["error"]
    else:
        assert result["max_diff"] < 1e-4
