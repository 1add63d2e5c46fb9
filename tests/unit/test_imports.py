"""What importing covidxray loads: the data and evaluation layers and the settings need no Keras
backend, and ``covidxray --help`` answers without one."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import covidxray.data
import covidxray.evaluation

BACKENDS = ("keras", "tensorflow", "torch", "jax")


def _modules(package) -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."))


def _loaded_backends(code: str) -> list[str]:
    """The backend modules loaded after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {BACKENDS!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_data_and_evaluation_layers_import_no_backend():
    modules = ["covidxray.config", "covidxray.data", "covidxray.evaluation",
               *_modules(covidxray.data), *_modules(covidxray.evaluation)]
    assert "covidxray.data.images" in modules and "covidxray.evaluation.scoring" in modules  # the walk found them
    assert _loaded_backends("\n".join(f"import {m}" for m in modules)) == []


def test_help_answers_without_a_backend():
    done = subprocess.run([sys.executable, "-m", "covidxray", "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: covidxray") and "never for diagnosis" in done.stdout
    code = ("import contextlib, io, runpy, sys\n"
            "for argv in (['--help'], ['train', '--help'], ['models']):\n"
            "    sys.argv = ['covidxray', *argv]\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        runpy.run_module('covidxray', run_name='__main__', alter_sys=True)")
    assert _loaded_backends(code) == []
