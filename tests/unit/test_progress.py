"""covidxray.progress: bars drawn on a terminal, never in logs (stderr not a terminal) or when told not to.

(``--quiet`` on the command line: tests/e2e/test_cli_progress.py.)"""

from __future__ import annotations

import io
import sys

from covidxray.data.cache import ImageCache
from covidxray.progress import bar_enabled, progress_bar, set_progress
from helpers import gray, use_log_file, use_terminal, write_png


def test_bar_enabled_follows_the_terminal_unless_told(monkeypatch):
    use_terminal(monkeypatch)
    assert bar_enabled()
    set_progress(False)
    assert not bar_enabled()
    set_progress(None)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not bar_enabled()
    set_progress(True)
    assert bar_enabled()


def test_bar_on_a_terminal_nothing_when_quiet(monkeypatch):
    terminal = use_terminal(monkeypatch)
    assert list(progress_bar(range(5), desc="counting")) == list(range(5))
    assert "counting" in terminal.getvalue() and "5/5" in terminal.getvalue()
    terminal.seek(0), terminal.truncate()
    set_progress(False)  # covidxray --quiet
    assert sum(progress_bar(range(5), desc="counting")) == 10  # still iterates
    assert terminal.getvalue() == ""
    set_progress(None)
    assert sum(progress_bar(range(5), desc="counting", disable=True)) == 10  # one bar hidden whatever the switch
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


def test_a_manual_bar_counts_updates(monkeypatch):
    terminal = use_terminal(monkeypatch)
    with progress_bar(total=4, desc="heatmaps", unit="img") as bar:
        bar.update(3)
        bar.update()
    assert bar.n == 4 and "heatmaps" in terminal.getvalue() and "4/4" in terminal.getvalue()
