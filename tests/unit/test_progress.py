"""Progress bars: drawn on a terminal, never in logs (stderr not a terminal) or with --quiet."""

from __future__ import annotations

import contextlib
import io
import sys

import pytest

from covidxray.cli import main
from covidxray.data.cache import ImageCache
from covidxray.progress import bar_enabled, progress_bar
from helpers import build_run, gray, write_png


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal and keeps what was written to it."""

    def isatty(self) -> bool:
        return True


def _stderr(monkeypatch, stream):
    """Replace sys.stderr inside the test body (pytest's capture resets it between phases)."""
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def use_terminal(monkeypatch) -> FakeTerminal:
    return _stderr(monkeypatch, FakeTerminal())


def use_log_file(monkeypatch) -> io.StringIO:
    return _stderr(monkeypatch, io.StringIO())  # stderr redirected to a file: not a terminal


def test_bar_enabled_follows_the_terminal_unless_told(monkeypatch):
    use_terminal(monkeypatch)
    assert bar_enabled(None) and bar_enabled(True) and not bar_enabled(False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not bar_enabled(None) and bar_enabled(True) and not bar_enabled(False)


def test_bar_on_a_terminal_nothing_when_quiet(monkeypatch):
    terminal = use_terminal(monkeypatch)
    assert list(progress_bar(range(5), desc="counting")) == list(range(5))
    assert "counting" in terminal.getvalue() and "5/5" in terminal.getvalue()
    terminal.seek(0), terminal.truncate()
    assert sum(progress_bar(range(5), desc="counting", progress=False)) == 10  # still iterates
    assert terminal.getvalue() == ""


def test_no_bar_in_a_log_file(monkeypatch):
    log_file = use_log_file(monkeypatch)
    list(progress_bar(range(5), desc="counting"))
    assert log_file.getvalue() == ""


def test_decoding_shows_a_bar_only_on_a_terminal(tmp_path, monkeypatch):
    terminal = use_terminal(monkeypatch)
    paths = [str(write_png(tmp_path / f"{i}.png", gray(i))) for i in range(3)]
    ImageCache(tmp_path / "c1").load(paths, 8)
    assert "decoding at 8px" in terminal.getvalue()
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    ImageCache(tmp_path / "c2").load(paths, 8)
    assert log.getvalue() == ""


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
