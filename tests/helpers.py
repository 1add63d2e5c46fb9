"""Helpers shared by the tests (imported as ``from helpers import ...``; conftest.py holds fixtures only):
synthetic X-ray datasets, tiny images and DICOM files, the shared data folder, a run folder in a
second, and a fake terminal for the progress bars."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("covid", "normal", "pneumonia")

#: ``../shared/data`` beside the checkout (the real DarkCovidNet and ieee8023 data).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_dir() -> Path:
    """The shared data folder; fails the test on CI (env var ``CI`` set) when absent, else skips."""
    if not SHARED_DATA.is_dir():
        message = f"shared data folder {SHARED_DATA} is absent"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so real-data tests must run)")
        pytest.skip(message)
    return SHARED_DATA


def synthetic_xray(label: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A grayscale image whose class is easy to see: a bright disc, flat noise, or stripes."""
    image = rng.normal(90, 12, (size, size))
    yy, xx = np.mgrid[:size, :size]
    if label == "covid":
        image[(yy - size / 3) ** 2 + (xx - size / 3) ** 2 < (size / 5) ** 2] = 230
    elif label == "pneumonia":
        image[(yy // 4) % 2 == 0] += 110
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class: int = 12, classes=CLASSES, seed: int = 0, manifest: bool = True) -> Path:
    """Class folders of synthetic images, two images per patient, plus a manifest.csv."""
    rng = np.random.default_rng(seed)
    rows = ["path,label,patient_id,source"]
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"{label}/{label}_{i:03d}.png"
            Image.fromarray(synthetic_xray(label, rng)).save(root / name)
            rows.append(f"{name},{label},{label}-p{i // 2},synthetic")
    if manifest:
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def gray(seed: int, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    """A random 8-bit grayscale image, different for every seed."""
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def write_image(path: Path, array: np.ndarray, **save_options) -> Path:
    """Save ``array`` with Pillow (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_options)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    return write_image(path, array)


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """The bytes of ``array`` saved as an image file (PNG, JPEG ...), as an upload sends them."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_class_folders(root: Path, counts: dict[str, int], suffix: str = ".png") -> dict[str, list[Path]]:
    """``root/<folder>/img<i><suffix>`` with ``counts[folder]`` distinct images per folder."""
    written: dict[str, list[Path]] = {}
    seed = 0
    for folder, count in counts.items():
        written[folder] = []
        for i in range(count):
            seed += 1
            written[folder].append(write_image(root / folder / f"img{i}{suffix}", gray(seed)))
    return written


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                signed: bool = False, **attributes) -> Path:
    """A minimal single-frame DICOM file (explicit VR little endian, 16 bits allocated).

    ``attributes`` are set on the dataset as they are (``WindowCenter=...``, ``RescaleSlope=...``).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = 1 if signed else 0
    dataset.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    for name, value in attributes.items():
        setattr(dataset, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def tiny_body(x, num_classes: int):
    """A model body that builds and trains in a second: one strided convolution with batch norm."""
    import keras

    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="tiny_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def build_run(run_dir: Path, image_size: int = 32, task: str = "three-class", seed: int = 0) -> Path:
    """A run folder with an untrained ``compactnet`` (random weights) and its config: enough
    for predict, serve and heatmaps, in a second instead of a training run."""
    import keras

    from covidxray.config import TrainConfig
    from covidxray.models import create_model

    config = TrainConfig(data="synthetic", task=task, image_size=image_size, seed=seed).resolve()
    keras.utils.set_random_seed(seed)
    model = create_model(config.model, num_classes=len(config.classes), image_size=image_size, seed=seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
    model.save(run_dir / "model.keras")
    return run_dir


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal and keeps what was written to it."""

    def isatty(self) -> bool:
        return True


def use_terminal(monkeypatch) -> FakeTerminal:
    """Replace sys.stderr by a terminal inside the test body (pytest's capture resets it between phases)."""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    return terminal


def use_log_file(monkeypatch) -> io.StringIO:
    """Replace sys.stderr by a stream that is not a terminal (stderr redirected to a log file)."""
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    return log


def png_declaring(width: int, height: int, bit_depth: int = 16, rows: int = 4) -> bytes:
    """A grayscale PNG whose header declares ``width`` x ``height`` pixels but holds only ``rows``
    rows of data: a file of a few hundred bytes that would take width x height x bit_depth / 8
    bytes to decode (issue 12's hostile uploads, without writing gigabytes)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\0" + b"\0" * (width * bit_depth // 8)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * rows)) + chunk(b"IEND", b""))


def traced_peak(call):
    """``(call(), peak bytes Python allocated while it ran)``, measured with tracemalloc."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@contextlib.contextmanager
def cut_after_epoch(last: int, error: type[BaseException] = KeyboardInterrupt):
    """Inside, a training run stops with ``error`` right after its backup of epoch ``last`` (from 0),
    as a run killed there would; the block must raise it (``pytest.raises``)."""
    from covidxray.training.backup import RunBackup

    finish_epoch = RunBackup.on_epoch_end

    def cut(self, epoch, logs=None):
        finish_epoch(self, epoch, logs)
        if epoch == last:
            raise error

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunBackup, "on_epoch_end", cut)
        with pytest.raises(error):
            yield
