"""covidxray.version: one version, read by the package, the command line and the build."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import tomllib

import covidxray
from covidxray.version import __version__

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_version_is_one_string_everywhere():
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?", __version__)
    assert covidxray.__version__ == __version__
    assert version("covidxray") == __version__  # the installed distribution's metadata
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert "version" in project.get("dynamic", []) or project.get("version") == __version__
