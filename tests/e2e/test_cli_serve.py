"""``covidxray serve`` on the command line: every mistake is one clear line before anything loads."""

from __future__ import annotations

import socket

import pytest

from covidxray.cli import main
from helpers import build_run

pytest.importorskip("fastapi", reason="covidxray[serve] is not installed")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("serve") / "run")


def test_serve_without_a_run_or_a_shipped_model_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import covidxray.presets as presets

    monkeypatch.setattr(presets, "files", lambda package: tmp_path)  # an installation without the model
    assert main(["serve"]) == 2
    assert "pass --run RUN_DIR" in capsys.readouterr().err


def test_serve_on_a_busy_port_is_a_clear_error(run_dir, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--run", str(run_dir), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_on_a_folder_without_a_run(tmp_path, capsys):
    assert main(["serve", "--run", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err


def test_serve_without_the_extra_names_the_install(run_dir, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", "--run", str(run_dir)]) == 2
    assert "needs uvicorn: pip install 'covidxray[serve]'" in capsys.readouterr().err


def test_serve_refuses_an_upload_limit_that_is_not_a_positive_size(tmp_path, capsys):
    # issue 12: --max-upload-mb -1 was accepted (every upload then refused as too large)
    assert main(["serve", "--run", str(tmp_path), "--max-upload-mb", "-1"]) == 2  # before the run is looked at
    error = capsys.readouterr().err
    assert "--max-upload-mb -1" in error and "greater than 0" in error and len(error.strip().splitlines()) == 1
