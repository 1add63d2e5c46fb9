"""Atomic file writes: write to a temporary name beside the target, then rename onto it.

An interrupted process therefore never leaves a half-written file under the target name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, target)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode())


def atomic_save(target: str | Path, save: Callable[[Path], object]) -> None:
    """Call ``save(tmp_path)`` then rename onto ``target`` (for writers that take a path).

    The temporary name keeps the target's suffix, for writers that pick a format by it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(handle)
    try:
        save(Path(name))
        os.replace(name, target)
    finally:
        if os.path.exists(name):
            os.unlink(name)
