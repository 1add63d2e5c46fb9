"""covidxray.files: atomic writes of files and folders, and recovery from a swap cut short."""

import os
import stat

import pytest

from covidxray.errors import CovidXrayError
from covidxray.files import (
    atomic_save,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_text,
    check_writable,
    is_temporary,
    recover_dir,
    remove_temporaries,
)


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


def test_a_folder_swap_cut_short_is_recovered(tmp_path):
    target = tmp_path / "backup"
    atomic_write_dir(target, lambda folder: (folder / "a").write_text("1"))
    atomic_write_dir(target, lambda folder: (folder / "a").write_text("2"))
    assert (target / "a").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["backup"]
    # killed between the two renames: the old folder is aside, the new one not yet in place
    os.replace(target, tmp_path / ".backup.covidxray-old")
    (tmp_path / ".backup.0123456789ab.covidxray-tmp").mkdir()
    recover_dir(target)
    assert (target / "a").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["backup"]

    def fail(folder):
        (folder / "a").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, fail)
    assert (target / "a").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["backup"]


def test_atomic_write_bytes_and_text_replace_the_target(tmp_path):
    atomic_write_bytes(tmp_path / "sub" / "a.bin", b"\x00\x01")  # parent folders are created
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"\x00\x01"
    (tmp_path / "b.txt").write_text("old")
    atomic_write_text(tmp_path / "b.txt", "new")
    assert (tmp_path / "b.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "sub"]


def test_recover_dir_without_anything_to_recover(tmp_path):
    recover_dir(tmp_path / "backup")  # nothing there: nothing happens
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "backup").mkdir()
    (tmp_path / ".backup.0123456789ab.covidxray-tmp").mkdir()  # a half-built folder beside a complete one
    recover_dir(tmp_path / "backup")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup"]


def test_temporary_names_are_covidxrays_own(tmp_path):
    seen = []
    atomic_save(tmp_path / "model.keras", lambda tmp: seen.append(tmp.name) or tmp.write_text("x"))
    atomic_write_dir(tmp_path / "backup", lambda folder: seen.append(folder.name))
    assert all(is_temporary(name) for name in seen) and ".covidxray-tmp" in seen[0] and seen[0].endswith(".keras")
    assert is_temporary(".backup.covidxray-old")
    users = [".env.tmpl", ".build.tmp_files", ".model.0123456789ab.tmp.keras", ".x.tmp", "notes.covidxray-tmp",
             ".a.covidxray-tmp", ".a.xyz.covidxray-tmp", ".backup.old"]
    assert not any(is_temporary(name) for name in users)
    for name in users:
        (tmp_path / name).write_text("mine")
    (tmp_path / ".split.0123456789ab.covidxray-tmp.csv").write_text("left by a killed process")
    (tmp_path / ".saved_model.0123456789ab.covidxray-tmp").mkdir()
    remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*users, "backup", "model.keras"])


def test_an_error_names_the_target_not_the_temporary(tmp_path):
    (tmp_path / "evaldir").mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        atomic_write_text(tmp_path / "evaldir", "{}")
    assert raised.value.filename == str(tmp_path / "evaldir") and "covidxray-tmp" not in str(raised.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError) as raised:
        atomic_write_text(tmp_path / "file" / "metrics.json", "{}")
    assert raised.value.filename == str(tmp_path / "file") and "covidxray-tmp" not in str(raised.value)

    def fails(tmp):
        raise OSError(28, "No space left on device", str(tmp))

    with pytest.raises(OSError, match="No space left on device") as raised:
        atomic_save(tmp_path / "metrics.json", fails)
    assert raised.value.filename == str(tmp_path / "metrics.json")
    with pytest.raises(NotADirectoryError) as raised:
        atomic_write_dir(tmp_path / "file" / "backup", lambda folder: None)
    assert raised.value.filename == str(tmp_path / "file")  # the file in the way

    def write(folder):
        raise OSError(28, "No space left on device", str(folder / "state.json"))

    with pytest.raises(OSError) as raised:
        atomic_write_dir(tmp_path / "backup", write)
    assert raised.value.filename == str(tmp_path / "backup" / "state.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaldir", "file"]


def test_check_writable_finds_now_what_the_write_would_find_at_the_end(tmp_path, monkeypatch):
    check_writable(tmp_path / "new" / "folders" / "metrics.json")  # created when written
    assert list(tmp_path.iterdir()) == []  # the check writes nothing
    (tmp_path / "evaldir").mkdir()
    with pytest.raises(CovidXrayError, match="--out .*evaldir: is a folder; give the file to write"):
        check_writable(tmp_path / "evaldir")
    (tmp_path / "file").write_text("")
    with pytest.raises(CovidXrayError, match=r"--out .*metrics.json: .*file is a file, not a folder"):
        check_writable(tmp_path / "file" / "sub" / "metrics.json")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # tests may run as root, who may write anywhere
    with pytest.raises(CovidXrayError, match=f"no permission to write in {tmp_path}"):
        check_writable(tmp_path / "missing" / "metrics.json")
