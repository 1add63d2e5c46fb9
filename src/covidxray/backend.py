"""Pick the Keras backend before Keras is imported.

Keras 3 reads ``KERAS_BACKEND`` once, at import. When it is unset, covidxray keeps the backend
named in ``~/.keras/keras.json`` if that backend is installed (Keras writes that file with
``tensorflow`` on first import, installed or not), and otherwise picks the first installed of
TensorFlow, PyTorch and JAX: the order of their measured training speed on a laptop CPU (63.9,
32.8 and 29.0 images/s for DarkCovidNet at 256x256 on a 2-core machine; docs/speed.md). Set
``KERAS_BACKEND=jax`` (or ``torch``, ``tensorflow``) to choose. Where none is installed nothing
fails at import: the first command that needs Keras ends with :data:`NO_BACKEND`.

It also turns on TensorFlow's oneDNN kernels on every x86 CPU with AVX2 (:func:`use_onednn`) and
says what ``--mixed-precision auto`` (the default) trains in on this machine:
:func:`auto_mixed_precision`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

#: Keras backends in the order covidxray prefers them; each is also the name of its Python module.
PREFERENCE = ("tensorflow", "torch", "jax")
#: CPU flags (as Linux names them) for native bfloat16 arithmetic: AVX-512 bfloat16 dot products, AMX tiles.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
NO_BACKEND = ("covidxray needs a Keras backend and none is installed: pip install 'covidxray[tensorflow]' "
              "(or 'covidxray[jax]', 'covidxray[torch]')")


def _installed(backend: str) -> bool:
    try:
        return importlib.util.find_spec(backend) is not None
    except (ImportError, ValueError):  # a dotted or empty name from a hand-edited keras.json
        return False


def _keras_json_backend() -> str | None:
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    try:
        return json.loads((keras_home / "keras.json").read_text()).get("backend")
    except (OSError, ValueError):
        return None


def choose_backend() -> str | None:
    """Set ``KERAS_BACKEND`` when nothing chose one, and return the backend in force (None: none installed)."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    configured = _keras_json_backend()
    if configured and _installed(configured):
        return configured
    for backend in PREFERENCE:
        if _installed(backend):
            os.environ["KERAS_BACKEND"] = backend
            return backend
    return None


def use_onednn(flags: frozenset[str] | None = None) -> str | None:
    """Turn on TensorFlow's oneDNN kernels on an x86 CPU with AVX2 unless ``TF_ENABLE_ONEDNN_OPTS`` is set;
    return the setting in force ("1", "0", or None: TensorFlow decides).

    TensorFlow on Linux turns them on by itself only on CPUs with AVX512_VNNI, AVX_VNNI or AMX, so
    on an AVX2-only CPU (many AMD EPYC and Ryzen, older Intel) it runs Eigen's convolutions:
    darkcovidnet trained at 0.71x the PyTorch reference with them and 1.39-1.76x with oneDNN, on the
    Xeon limited to AVX2 (docs/speed.md). Must run before TensorFlow loads; the run records it.
    """
    if "TF_ENABLE_ONEDNN_OPTS" not in os.environ and "avx2" in (cpu_flags() if flags is None else flags):
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS")


def is_missing_backend(error: ImportError) -> bool:
    """True when ``error`` is Keras failing to import its backend's module (none installed)."""
    return isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in PREFERENCE


def import_keras_quietly() -> None:
    """Import Keras (and so its backend) with the process's stderr closed for the duration.

    TensorFlow 2.21 writes its oneDNN and absl start-up lines from C++ at import, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says; a command imports Keras through here so that they do not reach
    the terminal. Python errors are still raised; ``TF_CPP_MIN_LOG_LEVEL=0`` imports as usual.
    """
    import sys

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or "keras" in sys.modules:
        import keras  # noqa: F401
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_backend_logs() -> None:
    """Keep TensorFlow's C++ start-up lines (oneDNN, CPU features) and absl's off the terminal, and
    its "triggered tf.function retracing" warning off the terminal and the notebook.

    That warning fires when five of the last calls of Keras's predict code traced, whichever
    models they belong to: a run or an analysis predicts with several models (the classifier,
    its feature model, the Grad-CAM model, the lung segmenter), each traced once per batch shape
    (:func:`covidxray.inference.engines.predict_arrays` pads to one shape), so it warns about
    traces that cannot be avoided. Set ``TF_CPP_MIN_LOG_LEVEL=0`` to see everything again. Must
    run before TensorFlow loads.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")
    tensorflow_log = logging.getLogger("tensorflow")  # the logger TensorFlow's Python side writes to
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0" and _not_retracing not in tensorflow_log.filters:
        tensorflow_log.addFilter(_not_retracing)


def _not_retracing(record: logging.LogRecord) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


def runtime_environment() -> dict:
    """What a run ran on: Python, the package versions that decide its numbers, the backend and the CPU.

    Written into every run's ``metrics.json`` and report: the same command can give another
    number with other versions or another CPU's kernels.
    """
    import platform
    from importlib import metadata

    versions = {}
    for package in ("covidxray", "keras", "numpy", "scikit-learn", "pillow", "tensorflow", "tensorflow-cpu",
                    "jax", "jaxlib", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    import sys

    keras = sys.modules.get("keras")
    backend = keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND")
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "backend": backend, "packages": versions,
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}


def _cpu_model() -> str:
    import platform

    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def _cpuinfo_field(name: str, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The first value of field ``name`` in ``/proc/cpuinfo`` (Linux); None where there is none."""
    try:
        with open(cpuinfo) as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags, from ``/proc/cpuinfo``; empty where there is none (macOS, Windows)."""
    return frozenset((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_bfloat16(flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """The native bfloat16 features of this CPU (of :data:`BFLOAT16_CPU_FLAGS`); empty when it has none."""
    flags = cpu_flags() if flags is None else flags
    return tuple(flag for flag in BFLOAT16_CPU_FLAGS if flag in flags)


def auto_mixed_precision(model_prefers_bfloat16: bool) -> str | None:
    """What ``--mixed-precision auto`` trains in here: ``"mixed_bfloat16"`` or None (float32).

    bfloat16 only where it was measured faster (docs/speed.md): a model that trains faster in it on a
    CPU (``ModelSpec.cpu_bfloat16``), the TensorFlow backend, a CPU with AMX tiles for bfloat16
    (``amx_bf16``: oneDNN runs the convolutions on them) and no GPU in sight. Everything else
    trains in float32: another backend or a GPU (not measured), a CPU with AVX512_BF16 alone
    (measured slower than float32 with AMX turned off), the default ``compactnet`` (no faster).
    """
    if not model_prefers_bfloat16 or choose_backend() != "tensorflow" or "amx_bf16" not in cpu_bfloat16():
        return None
    import tensorflow as tf

    return None if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
