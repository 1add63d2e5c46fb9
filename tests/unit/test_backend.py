"""covidxray.backend: which Keras backend covidxray picks, before Keras is imported."""

import json
import os
import subprocess
import sys

import pytest

from covidxray import backend


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


def test_an_explicit_keras_backend_is_kept(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert backend.choose_backend() == "jax"


def test_the_first_installed_backend_in_the_order_of_speed(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no keras.json
    monkeypatch.setattr(backend, "_installed", lambda name: name in ("torch", "jax"))
    assert backend.choose_backend() == "torch" and os.environ["KERAS_BACKEND"] == "torch"
    monkeypatch.delenv("KERAS_BACKEND")
    monkeypatch.setattr(backend, "_installed", lambda name: False)
    assert backend.choose_backend() is None and "KERAS_BACKEND" not in os.environ  # fails later, with NO_BACKEND
    assert "pip install 'covidxray[tensorflow]'" in backend.NO_BACKEND


def test_keras_json_is_kept_only_when_its_backend_is_installed(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    monkeypatch.setattr(backend, "_installed", lambda name: name in ("tensorflow", "jax"))
    assert backend.choose_backend() == "jax" and "KERAS_BACKEND" not in os.environ  # Keras reads keras.json itself
    (tmp_path / "keras.json").write_text("{broken")
    assert backend.choose_backend() == "tensorflow"


def test_installed_survives_odd_names():
    assert backend._installed("json") and not backend._installed("no_such_module_xyz")
    assert not backend._installed("not.a.module") and not backend._installed("")


def test_is_missing_backend():
    assert backend.is_missing_backend(ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow"))
    assert backend.is_missing_backend(ModuleNotFoundError("x", name="jax.numpy"))
    assert not backend.is_missing_backend(ModuleNotFoundError("x", name="pandas"))
    assert not backend.is_missing_backend(ImportError("cannot import name 'x'", name="tensorflow"))


def test_quiet_backend_logs_sets_defaults_only(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("ABSL_MIN_LOG_LEVEL", "0")
    backend.quiet_backend_logs()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and os.environ["ABSL_MIN_LOG_LEVEL"] == "0"


def test_import_keras_quietly_hides_the_start_up_lines_only():
    code = ("import sys; from covidxray.backend import import_keras_quietly; import_keras_quietly(); "
            "print('keras' in sys.modules); print('after', file=sys.stderr)")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "True\n"
    assert done.stderr == "after\n"  # TensorFlow's oneDNN and absl lines are gone; stderr works again


def test_the_library_api_loads_keras_quietly_and_keeps_retracing_warnings_off():
    """A notebook's `covidxray.train` or `load_predictor` shows no TensorFlow start-up line, and
    TensorFlow's retracing warning (several models traced once each) is filtered; other warnings pass."""
    code = ("import logging, sys; import covidxray; covidxray.load_predictor(); print('keras' in sys.modules); "
            "log = logging.getLogger('tensorflow'); "
            "log.warning('5 out of the last 9 calls to <function f> triggered tf.function retracing. Tracing is expensive'); "
            "log.warning('another warning'); print('after', file=sys.stderr)")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "True\n"
    assert "retracing" not in done.stderr and "oneDNN" not in done.stderr and "absl" not in done.stderr, done.stderr
    assert "another warning" in done.stderr and done.stderr.endswith("after\n")


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert {"avx512_bf16", "amx_bf16", "fpu"} <= backend.cpu_flags(cpuinfo)
    assert backend.cpu_flags(tmp_path / "absent") == frozenset()  # macOS, Windows: nothing known
    assert backend.cpu_bfloat16(frozenset({"avx512f", "amx_bf16"})) == ("amx_bf16",)
    assert backend.cpu_bfloat16(frozenset({"avx2", "avx512f"})) == ()


def test_auto_mixed_precision_is_bfloat16_only_where_measured_faster(monkeypatch):
    import tensorflow as tf

    gpus = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(backend, "cpu_bfloat16", lambda flags=None: ("avx512_bf16", "amx_bf16"))
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert backend.auto_mixed_precision(True) == "mixed_bfloat16"
    assert backend.auto_mixed_precision(False) is None  # a model that is not faster in bfloat16
    gpus.append("a GPU")
    assert backend.auto_mixed_precision(True) is None  # GPUs: not measured, float32
    gpus.clear()
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert backend.auto_mixed_precision(True) is None  # other backends: not measured
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setattr(backend, "cpu_bfloat16", lambda flags=None: ("avx512_bf16",))
    assert backend.auto_mixed_precision(True) is None  # AVX-512 bfloat16 without AMX: measured slower
    monkeypatch.setattr(backend, "cpu_bfloat16", lambda flags=None: ())
    assert backend.auto_mixed_precision(True) is None  # a CPU without native bfloat16


def test_use_onednn_turns_tensorflows_fast_kernels_on_with_avx2_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert backend.use_onednn(frozenset({"sse4_2"})) is None  # no AVX2 (or no /proc/cpuinfo): TensorFlow decides
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    assert backend.use_onednn(frozenset({"avx2", "fma"})) == "1"  # an AVX2-only CPU: TensorFlow would leave it off
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert backend.runtime_environment()["tf_enable_onednn_opts"] == "1"  # the run records it
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert backend.use_onednn(frozenset({"avx2"})) == "0"  # the user's choice stays


def test_importing_covidxray_turns_onednn_on_before_tensorflow_loads(tmp_path):
    """In a fresh process on an AVX2 CPU, TensorFlow reports oneDNN on, whatever its own default."""
    if "avx2" not in backend.cpu_flags():
        pytest.skip("this CPU has no AVX2")
    code = ("import covidxray, os; print(os.environ['TF_ENABLE_ONEDNN_OPTS']); "
            "from tensorflow.python.util import _pywrap_util_port as port; print(port.IsMklEnabled())")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True"]
