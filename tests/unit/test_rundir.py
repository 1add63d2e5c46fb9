import os
import stat

import pytest

from covidxray.errors import CovidXrayError
from covidxray.files import atomic_save, atomic_write_text
from covidxray.rundir import METRICS, MODEL, RUN_FILES, RUN_FOLDERS, RunDir


def test_atomic_writes_get_normal_permissions_and_leave_no_temporary(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_save(tmp_path / "b.npy", lambda tmp: tmp.write_bytes(b"x"))
    finally:
        os.umask(old)
    for name in ("a.json", "b.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npy"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_overwrite_removes_every_file_of_the_old_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for name in RUN_FILES:
        run.file(name).write_text("old")
    for name in RUN_FOLDERS:  # backup/, saved_model/
        run.file(name).mkdir()
        (run.file(name) / "x").write_text("old")
    (run.path / ".model.0123456789ab.tmp.keras").write_text("left by a killed process")
    (run.path / "notes.txt").write_text("mine")
    with pytest.raises(CovidXrayError, match="--overwrite"):
        run.refuse_to_replace(overwrite=False)
    run.refuse_to_replace(overwrite=True)
    run.create()
    assert [p.name for p in run.path.iterdir()] == ["notes.txt"]  # not ours: kept


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(CovidXrayError, match="is a file"):
        RunDir(tmp_path / "run").refuse_to_replace()


def test_a_foreign_config_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CovidXrayError, match="config.json"):
        run.load_config()
    assert MODEL in RUN_FILES and METRICS in RUN_FILES
