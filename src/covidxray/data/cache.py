"""Decode each image once: grayscale, resized, stored on disk keyed by content and size.

The first run reads every file, hashes its bytes, decodes it and writes
``ROOT/<size>/<sha256>.npy``. An index maps each file's path, byte size and modification time
to its hash, so later runs (and every epoch, which trains from one in-memory array) open no
image file at all. Renamed or copied files with the same bytes share one entry.

The cache is never trusted blindly: a cached array that cannot be read or has the wrong shape, an
index entry that is not one, or an index that is not JSON is recomputed, with a warning; no
command fails on a bad cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidxray.data.images import decode_resized, read_file_bytes
from covidxray.errors import ImageReadError, printable
from covidxray.files import atomic_save, atomic_write_bytes
from covidxray.progress import progress_bar

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
#: Bump when decoding or resizing changes, so that old arrays are not reused.
FORMAT_VERSION = "v1"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_cache_dir() -> Path:
    """``$COVIDXRAY_CACHE``, else ``$XDG_CACHE_HOME/covidxray``, else ``~/.cache/covidxray``."""
    if os.environ.get("COVIDXRAY_CACHE"):
        return Path(os.environ["COVIDXRAY_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "covidxray"


@dataclass
class DecodedImages:
    """Images of a list of files: ``images[i]`` is file ``i``; failed files are listed apart."""

    images: np.ndarray  # (n, size, size) uint8, rows of failed files are zero
    pixel_digests: list[str | None]
    failed: dict[str, str] = field(default_factory=dict)  # path -> error message

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the files that decoded."""
        return np.array([d is not None for d in self.pixel_digests], dtype=bool)


class ImageCache:
    """On-disk store of decoded, resized images. Safe to interrupt: every write is atomic."""

    def __init__(self, root: str | Path | None = None, workers: int | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.workers = workers or min(4, os.cpu_count() or 1)

    def load(self, paths: list[str], size: int) -> DecodedImages:
        """Decode (or fetch from the cache) every path at ``size`` x ``size``."""
        index = self._read_index()
        images = np.zeros((len(paths), size, size), dtype=np.uint8)
        digests: list[str | None] = [None] * len(paths)
        failed: dict[str, str] = {}
        todo = []
        for i, path in enumerate(paths):
            try:
                entry = index.get(_file_key(path))
            except OSError:  # missing or unreadable: _decode reports it in .failed
                entry = None
            cached = self._cached(entry, size, paths[i])
            if cached is not None:
                images[i], digests[i] = cached, entry["pixels"]
            else:
                todo.append(i)
        if todo:
            with ThreadPoolExecutor(self.workers) as pool:
                results = pool.map(lambda i: self._decode(paths[i], size), todo)
                bar = progress_bar(zip(todo, results), total=len(todo), desc=f"decoding at {size}px",
                                   unit="img")
                for i, result in bar:
                    if isinstance(result, ImageReadError):
                        failed[paths[i]] = str(result)
                        continue
                    key, entry, array = result
                    index[key] = entry
                    images[i], digests[i] = array, entry["pixels"]
            self._write_index(index)
        return DecodedImages(images, digests, failed)

    def _cached(self, entry, size: int, path: str) -> np.ndarray | None:
        """The cached array of an index entry, or None (not cached; or a bad entry, with a warning)."""
        if entry is None:
            return None
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and _SHA256.fullmatch(entry["sha256"]) and isinstance(entry.get("pixels"), str)):
            log.warning("%s: a bad entry for %s; decoding the image again", printable(self._index_path()),
                        printable(path))
            return None
        cached = self._array_path(entry["sha256"], size)
        if not cached.is_file():
            return None
        try:
            array = np.load(cached, allow_pickle=False)
            if array.dtype != np.uint8 or array.shape != (size, size):
                raise ValueError(f"holds a {array.dtype} array of shape {array.shape}, not {size}x{size} uint8")
        except (OSError, ValueError, EOFError) as error:
            log.warning("%s: corrupt cached image of %s (%s); decoding the image again", printable(cached),
                        printable(path), " ".join(str(error).split()))
            return None
        return array

    def _decode(self, path: str, size: int):
        try:
            key = _file_key(path)  # before reading: a file changed meanwhile is decoded again next time
            data = read_file_bytes(path)  # a FIFO or a link to a device (a manifest may name one): refused unread
        except ImageReadError as error:
            return error
        except FileNotFoundError:
            return ImageReadError(path, "no such file (moved or deleted?)", "restore it or remove it from the dataset")
        except OSError as error:
            return ImageReadError(path, f"cannot read ({error.strerror})", "check the file's permissions")
        sha = hashlib.sha256(data).hexdigest()
        try:
            array, digest = decode_resized(path, size, data)
        except ImageReadError as error:
            return error
        atomic_save(self._array_path(sha, size), lambda tmp: np.save(tmp, array))
        return key, {"sha256": sha, "pixels": digest}, array

    def _array_path(self, sha: str, size: int) -> Path:
        return self.root / FORMAT_VERSION / str(size) / f"{sha}.npy"

    def _index_path(self) -> Path:
        return self.root / FORMAT_VERSION / INDEX_NAME

    def _read_index(self, warn: bool = True) -> dict:
        path = self._index_path()
        try:
            index = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:  # a cut-short or foreign file, bytes that are not UTF-8
            index = error
        if not isinstance(index, dict):
            if warn:
                log.warning("%s: not a covidxray cache index; rebuilding it (the images are decoded again)",
                            printable(path))
            return {}
        return index

    def _write_index(self, index: dict) -> None:
        current = self._read_index(warn=False)  # another process may have added entries meanwhile
        current.update(index)
        atomic_write_bytes(self._index_path(), json.dumps(current).encode())


def _file_key(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
