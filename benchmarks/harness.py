"""What the benchmark scripts share: per-backend worker processes, the machine, timing, synthetic
data and result files. Not a benchmark itself; the scripts beside it import it (this folder is
``sys.path[0]`` when one of them runs as ``python benchmarks/NAME.py``; code that loads a script
from elsewhere, a test say, puts this folder on ``sys.path`` first).

Keras fixes its backend at import, so a script that compares backends runs each one in a
process of its own: :func:`worker_env` is that process's environment (``KERAS_BACKEND`` and this
checkout's ``src`` first on ``PYTHONPATH``), and :func:`run_backends` runs ``script --worker``
once per backend and collects the JSON object each prints last.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
BACKENDS = ("tensorflow", "torch", "jax")


# ---------------------------------------------------------------------------------------------
# Backends and worker processes


def installed_backends(order: Iterable[str] = BACKENDS) -> list[str]:
    """The Keras backends of ``order`` whose package is installed, in that order."""
    return [b for b in order if importlib.util.find_spec(b) is not None]


def worker_env(backend: str | None) -> dict:
    """The environment of a benchmark worker: ``backend`` for Keras, and this checkout's ``src`` first."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if backend:
        env["KERAS_BACKEND"] = backend
    src = str(SRC)
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    return env


def run_backend_worker(script: str, backend: str, arguments: list[str]) -> dict | None:
    """Run ``script --worker *arguments`` with ``backend`` and return the JSON object on its last
    line of output; None (its error printed) where it fails."""
    done = subprocess.run([sys.executable, script, "--worker", *arguments], env=worker_env(backend),
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{backend}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_backends(script: str, backends: Iterable[str], arguments: Callable[[str], list[str]],
                 table: Callable[[list[dict]], str]) -> list[dict]:
    """:func:`run_backend_worker` for each backend (``arguments(backend)``: its worker's options),
    printing ``table([result])`` as each one finishes; returns the results of those that did not fail."""
    results = []
    for backend in backends:
        result = run_backend_worker(script, backend, arguments(backend))
        if result is not None:
            results.append(result)
            print(table([result]), flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# The machine and the process


def machine() -> dict:
    """Platform, Python, CPU count and load; PyTorch's version and GPU where it is installed."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def host() -> str:
    """The processor and core count, for a table's caption."""
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def peak_rss_mib() -> float:
    """The peak resident set size of this process so far, in MiB (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


# ---------------------------------------------------------------------------------------------
# Timing and data


def timings(call: Callable[[], object], repeats: int, warmup: int = 0) -> list[float]:
    """Wall seconds of each of ``repeats`` calls of ``call``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def epoch_timer():
    """A Keras callback recording each epoch's wall seconds (``.seconds``) and CPU seconds of all the
    process's threads (``.cpu_seconds``: on a shared machine, less noisy than wall time).
    Keras is imported here, after the worker's backend is chosen."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.cpu_seconds = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)
            self.cpu_seconds.append(time.process_time() - self.cpu_started)

    return EpochTimer()


@functools.lru_cache(maxsize=1)
def synthetic_images(n: int, size: int, num_classes: int = 3):
    """``n`` random uint8 images ``(n, size, size, 1)`` and labels (kept for the next call of the same shape)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8), rng.integers(0, num_classes, n)


# ---------------------------------------------------------------------------------------------
# Results


def model_folds(cv: Path) -> list[Path]:
    """The ``fold-K`` folders of a ``covidxray cv`` output that hold their model, in fold order."""
    return sorted((f for f in Path(cv).glob("fold-*") if (f / "model.keras").is_file()), key=lambda f: int(f.name[5:]))


def markdown_table(header: list[str], rows: Iterable[Iterable], align: str = "", caption: str = "") -> str:
    """A Markdown table; ``align``: one letter a column, ``l`` or ``r`` (default: the first column
    left, the others right); ``caption``: a paragraph above it."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = [caption, ""] if caption else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(out: str | Path | None, data: dict, markdown: str | Path | None = None, table: str = "") -> None:
    """``data`` as indented JSON to ``out`` and ``table`` to ``markdown`` (either skipped when None or empty)."""
    if out:
        Path(out).write_text(json.dumps(data, indent=1) + "\n")
    if markdown:
        Path(markdown).write_text(table)
