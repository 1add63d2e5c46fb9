"""Progress bars on the command line: on a terminal, never with --quiet or when stderr is a log."""

from __future__ import annotations

import contextlib
import io
import sys

import pytest

from covidxray.cli import main
from helpers import build_run, gray, use_log_file, use_terminal, write_png


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    images = [write_png(root / "images" / f"{i}.png", gray(i, (40, 40))) for i in range(3)]
    return build_run(root / "run"), images


def _predict(argv, run, images) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*argv, "predict", "--run", str(run), *map(str, images), "--format", "json"])
    assert out.getvalue().count('"label"') == len(images)  # the predictions were printed
    return code, sys.stderr.getvalue()


def test_cli_bar_on_a_terminal(run_and_images, monkeypatch):
    use_terminal(monkeypatch)
    code, err = _predict([], *run_and_images)
    assert code == 0 and "reading" in err and "3/3" in err


def test_cli_quiet_draws_no_bar(run_and_images, monkeypatch):
    use_terminal(monkeypatch)
    code, err = _predict(["--quiet"], *run_and_images)
    assert code == 0 and "reading" not in err and "3/3" not in err and "%|" not in err


def test_cli_no_bar_when_stderr_is_a_log(run_and_images, monkeypatch):
    use_log_file(monkeypatch)
    code, err = _predict([], *run_and_images)
    assert code == 0 and "%|" not in err and "reading" not in err
