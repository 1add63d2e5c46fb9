"""covidxray.files: atomic writes of files and folders, and recovery from a swap cut short."""

import os
import stat

import pytest

from covidxray.files import atomic_save, atomic_write_bytes, atomic_write_dir, atomic_write_text, recover_dir


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
    os.replace(target, tmp_path / ".backup.old")
    (tmp_path / ".backup.0123456789ab.tmp").mkdir()
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
    (tmp_path / ".backup.0123456789ab.tmp").mkdir()  # a half-built folder beside a complete one
    recover_dir(tmp_path / "backup")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup"]
