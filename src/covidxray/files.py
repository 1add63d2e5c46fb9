"""Atomic file writes: write to a temporary name beside the target, then rename onto it.

An interrupted process therefore never leaves a half-written file under the target name.
Files get the usual permissions (0666 less the umask), as ``open`` would give them.

Temporary names are covidxray's own (``.NAME.HEX12.covidxray-tmp[.SUFFIX]``, and ``.NAME.covidxray-old``
for a folder renamed aside), so that cleaning up after a killed process removes only what
covidxray wrote (:func:`is_temporary`), never a user's ``.env.tmpl`` or ``.build.tmp/``. An error
while writing names the target, not the temporary.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
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
    tmp = _temporary_beside(target)
    try:
        save(tmp)
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


def check_writable(target: str | Path, what: str = "--out") -> None:
    """Raise now, before any work, if the file ``target`` could not be written later: it is a
    folder, a folder on its way is a file, or the nearest existing folder is not writable."""
    target = Path(target)
    if target.is_dir():
        raise CovidXrayError(f"{what} {target}: is a folder; give the file to write")
    check_can_create(target.parent, f"{what} {target}")


def check_can_create(folder: str | Path, what: str) -> None:
    """Raise if ``folder`` (or its missing parents) cannot be created or written in."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise CovidXrayError(f"{what}: {existing} is a broken link; choose another path")
        existing = existing.parent
    if not existing.is_dir():
        raise CovidXrayError(f"{what}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CovidXrayError(f"{what}: no permission to write in {existing}; choose another path")


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.{OLD_MARK}")
