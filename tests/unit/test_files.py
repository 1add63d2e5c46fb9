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
    check_output,
    check_outputs,
    check_writable,
    is_temporary,
    recover_dir,
    remove_temporaries,
    same_path,
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


@pytest.fixture
def specials(tmp_path):
    """A link to a file, a link to a folder, a dangling link, a link to /dev/null (never opened) and a FIFO."""
    (tmp_path / "real.csv").write_text("the user's")
    (tmp_path / "folder").mkdir()
    made = {"link.csv": tmp_path / "real.csv", "folderlink": tmp_path / "folder", "dangling.csv": tmp_path / "gone",
            "null.csv": "/dev/null"}
    for name, to in made.items():
        (tmp_path / name).symlink_to(to)
    os.mkfifo(tmp_path / "fifo.csv")
    return tmp_path, [*made, "fifo.csv"]


def test_an_atomic_write_never_replaces_a_link_or_a_special_file(specials):
    """Issue 30: a link, a FIFO or (a link to) a device under the target name is refused, named, before
    and after the work; nothing is written through it and it stays what it was."""
    folder, names = specials
    for name in names:
        target = folder / name
        before = os.lstat(target)
        with pytest.raises(CovidXrayError, match=rf"{name}: is a (symbolic link|FIFO \(named pipe\)); .*give another"):
            atomic_write_text(target, "new")
        after = os.lstat(target)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), name
    assert (folder / "real.csv").read_text() == "the user's"
    assert not [p for p in folder.iterdir() if is_temporary(p.name)]

    def makes_a_fifo(tmp):  # the target appears as a FIFO while the work runs: still not replaced
        tmp.write_text("new")
        os.mkfifo(folder / "late.csv")

    with pytest.raises(CovidXrayError, match="late.csv: is a FIFO"):
        atomic_save(folder / "late.csv", makes_a_fifo)
    assert stat.S_ISFIFO(os.lstat(folder / "late.csv").st_mode)
    with pytest.raises(CovidXrayError, match="folderlink: is a symbolic link, not a folder"):
        atomic_write_dir(folder / "folderlink", lambda tmp: (tmp / "a").write_text("x"))
    assert (folder / "folderlink").is_symlink() and list((folder / "folder").iterdir()) == []
    with pytest.raises(CovidXrayError, match="real.csv: is a regular file, not a folder"):
        atomic_write_dir(folder / "real.csv", lambda tmp: None)
    assert (folder / "real.csv").read_text() == "the user's"


def test_check_output_refuses_specials_inputs_and_existing_files_before_any_work(specials):
    folder, names = specials
    for name in names:
        with pytest.raises(CovidXrayError, match=rf"--out .*{name}: is a"):
            check_output(folder / name, "--out", overwrite=True)
    (folder / "data").mkdir()
    (folder / "data" / "manifest.csv").write_text("path,label\n")
    inputs = [folder / "real.csv", folder / "data"]
    with pytest.raises(CovidXrayError, match=r"--out .*real.csv: is also an input .*choose another path"):
        check_output(folder / "real.csv", "--out", overwrite=True, inputs=inputs)
    os.link(folder / "real.csv", folder / "hard.csv")  # the same file under another name
    with pytest.raises(CovidXrayError, match="hard.csv: is also an input"):
        check_output(folder / "hard.csv", "--out", overwrite=True, inputs=inputs)
    with pytest.raises(CovidXrayError, match=r"manifest.csv: is inside the input .*data"):
        check_output(folder / "data" / "manifest.csv", "--out", overwrite=True, inputs=inputs)
    (folder / "old.csv").write_text("kept")
    with pytest.raises(CovidXrayError, match="--out .*old.csv: exists; pass --overwrite to replace it"):
        check_output(folder / "old.csv", "--out", inputs=inputs)
    check_output(folder / "old.csv", "--out", overwrite=True, inputs=inputs)
    check_output(folder / "data" / "new.csv", "--out", inputs=inputs)  # new: nothing of the input replaced
    (folder / "b.png").write_text("x")
    with pytest.raises(CovidXrayError, match="--heatmaps .*b.png: exists"):
        check_outputs([folder / "a.png", folder / "b.png"], "--heatmaps", inputs=[folder / "c.png"])
    (folder / "d.png").mkdir()
    with pytest.raises(CovidXrayError, match="--heatmaps .*d.png: is a folder"):
        check_outputs([folder / "d.png"], "--heatmaps", overwrite=True)
    assert (folder / "old.csv").read_text() == "kept" and (folder / "real.csv").read_text() == "the user's"


def test_a_folder_that_cannot_be_written_in_is_found_as_root_too(tmp_path):
    """os.access says yes to root everywhere; the check tries to create a file (and removes it)."""
    with pytest.raises(CovidXrayError, match="no permission to write in /proc; choose another path"):
        check_writable("/proc/x.json")
    with pytest.raises(CovidXrayError, match="no permission to write in /proc"):
        check_output("/proc/covidxray-test/x.json", "--out")
    check_writable(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    import errno

    def full(path, flags, mode=0o777):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(CovidXrayError, match=r"cannot write in .* \(No space left on device\); free space"):
        check_writable(tmp_path / "x.json")


def test_same_path(tmp_path):
    (tmp_path / "a.csv").write_text("")
    (tmp_path / "link.csv").symlink_to(tmp_path / "a.csv")
    assert same_path(tmp_path / "a.csv", tmp_path / "link.csv")
    assert same_path(tmp_path / "new.json", tmp_path / "sub" / ".." / "new.json")
    assert not same_path(tmp_path / "new.json", tmp_path / "other.json")
