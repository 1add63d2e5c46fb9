"""Atomic file writes: write to a temporary name beside the target, then rename onto it.

An interrupted process therefore never leaves a half-written file under the target name.
Files get the usual permissions (0666 less the umask), as ``open`` would give them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def _temporary_beside(target: Path) -> Path:
    """Create an empty file next to ``target`` with the permissions ``open`` would give."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:12]}.tmp{target.suffix}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return tmp


def atomic_save(target: str | Path, save: Callable[[Path], object]) -> None:
    """Call ``save(tmp_path)`` then rename onto ``target`` (for writers that take a path).

    The temporary name keeps the target's suffix, for writers that pick a format by it.
    """
    target = Path(target)
    tmp = _temporary_beside(target)
    try:
        save(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    atomic_save(target, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode())


def atomic_write_dir(target: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_folder)`` on a fresh folder beside ``target``, then swap it in whole.

    A folder cannot be renamed over another in one step, so the old one is first renamed
    aside (``.NAME.old``) and removed once the new one is in place; :func:`recover_dir`
    puts it back if the process died between the two renames.
    """
    target = Path(target)
    recover_dir(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    old = _aside(target)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
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
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")
