"""Atomic file writes: write to a temporary name beside the target, then rename onto it.

An interrupted process therefore never leaves a half-written file under the target name.
Files get the usual permissions (0666 less the umask), as ``open`` would give them.

Temporary names are covidxray's own (``.NAME.HEX12.covidxray-tmp[.SUFFIX]``, and ``.NAME.covidxray-old``
for a folder renamed aside), so that cleaning up after a killed process removes only what
covidxray wrote (:func:`is_temporary`), never a user's ``.env.tmpl`` or ``.build.tmp/``. An error
while writing names the target, not the temporary.

The rules every output of every command follows (issue 30), checked here so they hold for all at once:

- A write never replaces what is not a regular file: a symbolic link, a FIFO, a device or a
  socket under the target name is refused (:func:`refuse_special`), before the work
  (:func:`check_output`) and again at the rename; covidxray never writes through a link either
  (the file it reaches is not the one the user named, and would not be replaced atomically).
- :func:`check_output`, called by a command before any work: the output is not one of the command's
  inputs (or a file inside an input folder, or a run's file), and an existing file is replaced only
  with ``--overwrite``; its folder can be created and written in (tried, so that it bites as root).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from covidxray.errors import CovidXrayError

TMP_MARK, OLD_MARK = "covidxray-tmp", "covidxray-old"
_TEMPORARY = re.compile(rf"\..+\.[0-9a-f]{{12}}\.{TMP_MARK}(\.[^.]+)?|\..+\.{OLD_MARK}")


def is_temporary(name: str) -> bool:
    """True for a name that :func:`atomic_save` or :func:`atomic_write_dir` gives its temporaries."""
    return _TEMPORARY.fullmatch(name) is not None


def _temporary_name(target: Path, stem: str, suffix: str = "") -> Path:
    return target.with_name(f".{stem}.{uuid.uuid4().hex[:12]}.{TMP_MARK}{suffix}")


def _temporary_beside(target: Path) -> Path:
    """Create an empty file next to ``target`` with the permissions ``open`` would give."""
    _make_folder(target.parent)
    tmp = _temporary_name(target, target.stem, target.suffix)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as error:
        raise _naming(error, tmp, target) from None
    return tmp


def _make_folder(folder: Path) -> None:
    """``mkdir -p``; a file on the way is named as such (mkdir says 'File exists')."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(folder)) from None


def _naming(error: OSError, tmp: Path, target: Path) -> OSError:
    """``error`` about the temporary ``tmp`` (or a file in it), retold about ``target``: the path the user knows."""
    if error.filename is None or isinstance(error.filename, bytes | int):
        return error
    name, tmp_name = os.fspath(error.filename), os.fspath(tmp)
    if name == tmp_name or name.startswith(tmp_name + os.sep):
        # OSError(errno, ...) makes the subclass of the errno: IsADirectoryError, PermissionError ...
        return OSError(error.errno, error.strerror, os.fspath(target) + name[len(tmp_name):])
    return error


def atomic_save(target: str | Path, save: Callable[[Path], object]) -> None:
    """Call ``save(tmp_path)`` then rename onto ``target`` (for writers that take a path).

    The temporary name keeps the target's suffix, for writers that pick a format by it.
    """
    target = Path(target)
    refuse_special(target)
    tmp = _temporary_beside(target)
    try:
        save(tmp)
        refuse_special(target)  # made while the work ran: still not replaced
        os.replace(tmp, target)
    except OSError as error:
        raise _naming(error, tmp, target) from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    atomic_save(target, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode())


def atomic_write_dir(target: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_folder)`` on a fresh folder beside ``target``, then swap it in whole.

    A folder cannot be renamed over another in one step, so the old one is first renamed
    aside (``.NAME.covidxray-old``) and removed once the new one is in place; :func:`recover_dir`
    puts it back if the process died between the two renames.
    """
    target = Path(target)
    recover_dir(target)
    if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
        raise CovidXrayError(f"{target}: is {kind_of(target)}, not a folder; covidxray replaces only a folder it "
                             "wrote there; choose another path")
    tmp = _temporary_name(target, target.name)
    old = _aside(target)
    try:
        _make_folder(target.parent)
        tmp.mkdir()
        write(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except OSError as error:
        raise _naming(error, tmp, target) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: str | Path) -> None:
    """Finish or undo an :func:`atomic_write_dir` that a killed process left half done."""
    target = Path(target)
    old = _aside(target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, target)
    for stale in target.parent.glob(f".{glob_escape(target.name)}.*.{TMP_MARK}"):
        if is_temporary(stale.name):
            shutil.rmtree(stale, ignore_errors=True)


def remove_temporaries(folder: str | Path) -> None:
    """Remove the temporaries a killed covidxray process left in ``folder`` (:func:`is_temporary`); nothing else."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for stale in folder.iterdir():
        if not is_temporary(stale.name):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def kind_of(path: str | Path) -> str:
    """What is at ``path``, not following a link: 'a regular file', 'a folder', 'a symbolic link', ..."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "nothing"
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
             (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def refuse_special(target: str | Path, what: str = "") -> None:
    """Raise if ``target`` is a symbolic link, a FIFO, a device or a socket: an output never replaces
    one, nor writes through it. A folder is left to the write, which fails on it naming it."""
    kind = kind_of(target)
    if kind not in ("nothing", "a regular file", "a folder"):
        where = f"{what} {target}" if what else str(target)
        raise CovidXrayError(f"{where}: is {kind}; an output is written only as a regular file, never through a "
                             "link or over a special file; give another path")


def check_writable(target: str | Path, what: str = "--out") -> None:
    """Raise now, before any work, if the file ``target`` could not be written later: it is a
    folder, a link or a special file (:func:`refuse_special`), a folder on its way is a file, or the
    nearest existing folder is not writable."""
    target = Path(target)
    refuse_special(target, what)
    if target.is_dir():
        raise CovidXrayError(f"{what} {target}: is a folder; give the file to write")
    check_can_create(target.parent, f"{what} {target}")


def check_output(target: str | Path, what: str, *, overwrite: bool = False, inputs=()) -> None:
    """Raise now, before any work, unless the file ``target`` may be written: :func:`check_writable`,
    it is none of ``inputs`` (files, or folders: nothing inside them; a run folder's files included)
    whatever ``overwrite`` says, and it does not exist unless ``overwrite`` (``--overwrite``)."""
    check_writable(target, what)
    check_outputs([target], what, overwrite=overwrite, inputs=inputs)


def check_outputs(targets, what: str, *, overwrite: bool = False, inputs=()) -> None:
    """:func:`check_output`'s input and existing-file rules for many files (a heatmap or mask per input):
    the inputs are looked at once. Nothing is written."""
    targets = [Path(t) for t in targets]
    present = [t for t in targets if os.path.lexists(t)]
    if not present:
        return
    files, folders = {}, []
    for path in map(Path, inputs):
        try:
            info = path.stat()
        except (OSError, ValueError):
            continue
        if stat.S_ISDIR(info.st_mode):
            folders.append(os.path.realpath(path))
        else:
            files[(info.st_dev, info.st_ino)] = path
    for target in present:
        refuse_special(target, what)
        if target.is_dir():
            raise CovidXrayError(f"{what} {target}: is a folder; a file of this name is to be written there, "
                                 "move the folder or choose another path")
        info = target.stat()
        same = files.get((info.st_dev, info.st_ino))
        real = os.path.realpath(target)
        inside = next((f for f in folders if os.path.commonpath([f, real]) == f), None)
        if same is not None or inside is not None:
            source = f"is also an input ({same})" if same is not None else f"is inside the input {inside}"
            raise CovidXrayError(f"{what} {target}: {source}; an output never replaces an input or a run's file, "
                                 "choose another path")
        if not overwrite:
            raise CovidXrayError(f"{what} {target}: exists; pass --overwrite to replace it, or choose another path")


def check_output_folder(folder: str | Path, what: str, names, *, overwrite: bool = False, inputs=()) -> None:
    """Raise now, before any work, unless ``folder`` (``what``: ``--heatmaps``, ``--out``) may receive the
    files ``names``: a folder, or a path where one can be created (a link to a folder is written in, a
    link to anything else or a special file is refused), and none of the files would replace an input
    or, without ``overwrite``, a file that exists (:func:`check_outputs`)."""
    folder = Path(folder)
    if not folder.is_dir():
        refuse_special(folder, what)
    if folder.exists() and not folder.is_dir():
        raise CovidXrayError(f"{folder}: is a file, not a folder; give {what} a folder (it is created if missing)")
    check_can_create(folder, f"{what} {folder}")
    check_outputs([folder / name for name in names], what, overwrite=overwrite, inputs=inputs)


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (existing or not): links and ``..`` resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_can_create(folder: str | Path, what: str) -> None:
    """Raise if ``folder`` (or its missing parents) cannot be created or written in."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise CovidXrayError(f"{what}: {existing} is a broken link; choose another path")
        existing = existing.parent
    if not existing.is_dir():
        raise CovidXrayError(f"{what}: {existing} is a file, not a folder; choose another path")
    error = None if not os.access(existing, os.W_OK | os.X_OK) else _write_error(existing)
    if error is not None and error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise CovidXrayError(f"{what}: cannot write in {existing} ({error.strerror}); free space or choose "
                             "another path")
    if not os.access(existing, os.W_OK | os.X_OK) or error is not None:
        raise CovidXrayError(f"{what}: no permission to write in {existing}; choose another path")


def _write_error(folder: Path) -> OSError | None:
    """Why a file cannot be created in ``folder``, or None: tried with a temporary name, removed at once
    (root may write in a mode-555 folder, but not in /proc or on a read-only mount)."""
    probe = _temporary_name(folder / "write-check", "write-check")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as error:
        return error
    probe.unlink(missing_ok=True)
    return None


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.{OLD_MARK}")
