"""Datasets larger than memory: decoded images in shard files, read a batch at a time.

``covidxray data shard`` decodes a dataset once into ``SHARD_DIR``:

* ``images-00000.npy``, ``images-00001.npy``, ...: ``(n, size, size)`` uint8 arrays of at most
  ``shard_size`` images each, in numpy's own ``.npy`` format (readable by any numpy, no
  extra dependency, a fixed-size header then raw pixels, so image ``k`` starts at a known byte);
* ``table.csv``: one row per image, in shard order: the dataset's columns (``path``, ``label``,
  ``patient_id``, ``source``, ``original_label``), the decoded pixels' digest (``pixels``, for
  the split's duplicate check) and where the image lies (``shard``, ``offset``);
* ``shards.json``, written last: format, image size, counts and the files that could not be
  decoded. A folder without it is an interrupted write and is refused.

Images are read with positional reads (``os.pread``), not a memory map: pages of a mapped file
count toward the process's resident memory as they are touched, so an epoch over a memory-mapped
dataset would show resident memory growing to the dataset's size. Read this way the process
holds only the batches in flight; the operating system's page cache still keeps hot files in
memory, and gives that memory back under pressure.

:class:`ShardArray` is an array-like view of shard rows: indexing with a slice, an index array
or a boolean mask gives another view without reading; an integer, ``np.asarray`` or
``astype`` reads the pixels. Training code can therefore treat it like the in-memory
``(n, size, size, 1)`` uint8 array it replaces.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray.data.images import decode_resized
from covidxray.data.sources import COLUMNS, as_paths, load_datasets
from covidxray.errors import DatasetError, ImageReadError
from covidxray.files import atomic_save, atomic_write_text
from covidxray.progress import progress_bar

log = logging.getLogger(__name__)

META_NAME = "shards.json"
TABLE_NAME = "table.csv"
FORMAT = "covidxray-shards-v1"
DEFAULT_SHARD_SIZE = 2048
TABLE_COLUMNS = [*COLUMNS, "pixels", "shard", "offset"]


def shard_file(index: int) -> str:
    return f"images-{index:05d}.npy"


def is_shard_dir(path) -> bool:
    """True for a folder written by :class:`ShardWriter` (complete or interrupted)."""
    path = Path(path)
    return path.is_dir() and ((path / META_NAME).is_file() or any(path.glob("images-*.npy")))


class ShardWriter:
    """Append decoded images one at a time; a full shard goes to disk and leaves memory.

    :meth:`close` writes the table and ``shards.json`` (atomically, the metadata last); a
    folder whose writer never closed stays incomplete and is refused by the readers.
    """

    def __init__(self, out, image_size: int, shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False):
        self.out, self.image_size, self.shard_size = Path(out), int(image_size), int(shard_size)
        if self.shard_size < 1:
            raise DatasetError("--shard-size must be at least 1")
        if self.out.exists() and any(self.out.iterdir()):
            if not (overwrite and is_shard_dir(self.out)):
                raise DatasetError(f"{self.out}: folder is not empty; pick a new --out "
                                   "(or --overwrite to replace an earlier shard folder)")
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.buffer = np.zeros((self.shard_size, self.image_size, self.image_size), dtype=np.uint8)
        self.filled, self.shards, self.rows = 0, [], []

    def add(self, image: np.ndarray, row: dict) -> None:
        """Add one ``(size, size)`` uint8 image with its table row (``path``, ``label``, ...)."""
        if image.shape != (self.image_size, self.image_size) or image.dtype != np.uint8:
            raise ValueError(f"expected a ({self.image_size}, {self.image_size}) uint8 image, got {image.shape} {image.dtype}")
        self.buffer[self.filled] = image
        self.rows.append({**row, "shard": len(self.shards), "offset": self.filled})
        self.filled += 1
        if self.filled == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if self.filled:
            part = self.buffer[:self.filled]
            atomic_save(self.out / shard_file(len(self.shards)), lambda tmp: np.save(tmp, part))
            self.shards.append(self.filled)
            self.filled = 0

    def close(self, skipped: dict[str, str] | None = None) -> Path:
        self._flush()
        table = pd.DataFrame(self.rows, columns=TABLE_COLUMNS).fillna("")
        atomic_write_text(self.out / TABLE_NAME, table.to_csv(index=False))
        meta = {"format": FORMAT, "image_size": self.image_size, "images": len(table),
                "shard_size": self.shard_size, "shards": self.shards, "skipped": skipped or {}}
        atomic_write_text(self.out / META_NAME, json.dumps(meta, indent=2) + "\n")
        return self.out


def write_shards(data, out, image_size: int, *, shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
                 workers: int | None = None) -> dict:
    """Decode every image of the dataset(s) at ``data`` into shards in ``out``; returns ``shards.json``.

    Images are decoded ``shard_size`` at a time, so memory holds one shard, whatever the
    dataset's size. Undecodable files are left out and listed in ``shards.json``; as when
    training from image files, an image with the same pixels as one of an earlier dataset is
    counted once.
    """
    table = load_datasets(data)
    workers = workers or min(4, os.cpu_count() or 1)

    def decode(path):
        try:
            return decode_resized(path, image_size)
        except ImageReadError as error:
            return error

    skipped: dict[str, str] = {}
    first_dataset: dict[str, str] = {}  # pixel digest -> the dataset it was first seen in
    bar = progress_bar(total=len(table), desc=f"sharding at {image_size}px", unit="img")
    writer = ShardWriter(out, image_size, shard_size, overwrite=overwrite)
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(table), shard_size):
            chunk = table.iloc[start:start + shard_size]
            for row, result in zip(chunk.to_dict("records"), pool.map(decode, chunk["path"])):
                if isinstance(result, ImageReadError):
                    skipped[row["path"]] = str(result)
                    log.warning("skipped %s", result)
                elif first_dataset.setdefault(result[1], row["dataset"]) == row["dataset"]:
                    writer.add(result[0], {**row, "pixels": result[1]})
            bar.update(len(chunk))
    bar.close()
    if not writer.rows:
        raise DatasetError(f"{data}: none of the {len(table)} images could be decoded")
    writer.close(skipped)
    return read_meta(out)


def read_meta(root) -> dict:
    """``shards.json`` of ``root``, or a DatasetError saying how to fix the folder."""
    root = Path(root)
    try:
        meta = json.loads((root / META_NAME).read_text())
    except FileNotFoundError:
        raise DatasetError(f"{root}: incomplete shard folder (no {META_NAME}; was the write interrupted?); "
                           "run covidxray data shard again with --overwrite") from None
    except (OSError, ValueError) as error:
        raise DatasetError(f"{root / META_NAME}: cannot read ({error}); run covidxray data shard again") from None
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{root}: shard format {meta.get('format')!r} is not {FORMAT!r}; "
                           "run covidxray data shard again")
    return meta


def shard_image_size(data) -> int | None:
    """The image size of the shard folder ``data`` (a path, or a list of one); None when it is not one."""
    paths = as_paths(data)
    if not any(is_shard_dir(p) for p in paths):
        return None
    if len(paths) > 1:
        raise DatasetError(f"{', '.join(paths)}: a shard folder cannot be combined with other --data; "
                           "shard the datasets together: covidxray data shard --data A --data B ...")
    return int(read_meta(paths[0])["image_size"])


class ShardReader:
    """Random access to the images of a shard folder, by global row number."""

    def __init__(self, root):
        self.root = Path(root)
        meta = read_meta(self.root)
        self.image_size = int(meta["image_size"])
        counts = np.asarray(meta["shards"], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self._files: dict[int, tuple[int, int]] = {}  # shard -> (file descriptor, data offset)
        self._lock = threading.Lock()  # PyDataset workers are threads

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _open(self, shard: int) -> tuple[int, int]:
        with self._lock:
            if shard not in self._files:
                self._files[shard] = self._open_file(shard)
            return self._files[shard]

    def _open_file(self, shard: int) -> tuple[int, int]:
        """Open shard ``shard`` and find where its pixels start (after the .npy header)."""
        path = self.root / shard_file(shard)
        try:
            with open(path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(handle)
                offset = handle.tell()
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path}: cannot read shard ({error}); run covidxray data shard again") from None
        if dtype != np.uint8 or shape[1:] != (self.image_size, self.image_size):
            raise DatasetError(f"{path}: holds {shape} {dtype}, not {self.image_size}px uint8 images; "
                               "run covidxray data shard again")
        return os.open(path, os.O_RDONLY), offset

    def read(self, rows) -> np.ndarray:
        """Images ``rows`` (global row numbers) as a ``(len(rows), size, size)`` uint8 array."""
        rows = np.asarray(rows, dtype=np.int64)
        pixels = self.image_size * self.image_size
        out = np.empty((len(rows), self.image_size, self.image_size), dtype=np.uint8)
        shards = np.searchsorted(self.starts, rows, side="right") - 1
        for i, (row, shard) in enumerate(zip(rows, shards)):
            fd, offset = self._open(int(shard))
            data = os.pread(fd, pixels, offset + int(row - self.starts[shard]) * pixels)
            if len(data) != pixels:
                raise DatasetError(f"{self.root / shard_file(int(shard))}: truncated shard; run covidxray data shard again")
            out[i] = np.frombuffer(data, dtype=np.uint8).reshape(self.image_size, self.image_size)
        return out

    def close(self) -> None:
        while self._files:
            fd, _ = self._files.popitem()[1]
            os.close(fd)

    def __del__(self):
        self.close()


class ShardArray:
    """A lazy ``(n, size, size, 1)`` uint8 array of shard images (see the module's docstring)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, reader: ShardReader, rows=None):
        self.reader = reader
        self.rows = np.arange(len(reader), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), self.reader.image_size, self.reader.image_size, 1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.reader.read(self.rows[[index]])[0, ..., None]
        return ShardArray(self.reader, self.rows[index])

    def read(self) -> np.ndarray:
        return self.reader.read(self.rows)[..., None]

    def __array__(self, dtype=None, copy=None):
        images = self.read()
        return images if dtype is None else images.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return self.read().astype(dtype)


def load_shards(root) -> tuple[pd.DataFrame, ShardArray, dict[str, str]]:
    """The table, a lazy array of all images (row ``i`` is table row ``i``) and the skipped files."""
    meta = read_meta(root)
    try:
        table = pd.read_csv(Path(root) / TABLE_NAME, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DatasetError(f"{Path(root) / TABLE_NAME}: cannot read ({error}); run covidxray data shard again") from None
    reader = ShardReader(root)
    if len(table) != len(reader) or len(table) != meta["images"]:
        raise DatasetError(f"{root}: {TABLE_NAME} lists {len(table)} images but the shards hold {len(reader)}; "
                           "run covidxray data shard again")
    return table, ShardArray(reader), dict(meta.get("skipped", {}))
