"""DICOM X-rays: display window, rescale, bit depths, compressed pixel data, and DICOM in every
path that reads images (the training cache, predict). The tests write their own DICOM files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from covidxray.data.cache import ImageCache
from covidxray.data.images import read_image
from covidxray.data.sources import load_dataset
from covidxray.errors import ImageReadError
from helpers import write_dicom

RAMP = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)  # 12-bit values 0..4080


def test_window_center_and_width_are_applied(tmp_path):
    image = read_image(write_dicom(tmp_path / "w.dcm", RAMP, WindowCenter=2048, WindowWidth=1024))
    assert image.dtype == np.uint8 and image.shape == RAMP.shape
    assert (image[RAMP <= 1536] == 0).all()  # below the window: black
    assert (image[RAMP >= 2560] == 255).all()  # above it: white
    inside = image[(RAMP > 1600) & (RAMP < 2500)]
    assert 0 < inside.min() and inside.max() < 255 and (np.diff(inside.astype(int)) >= 0).all()
    plain = read_image(write_dicom(tmp_path / "p.dcm", RAMP))
    assert (plain != image).any()  # the window changed the picture


def test_rescale_is_applied_before_the_window(tmp_path):
    stored = read_image(write_dicom(tmp_path / "a.dcm", RAMP, WindowCenter=2048, WindowWidth=1024))
    # the same window given in modality units, after a rescale intercept of -1024
    rescaled = read_image(write_dicom(tmp_path / "b.dcm", RAMP, WindowCenter=1024, WindowWidth=1024,
                                      RescaleIntercept=-1024, RescaleSlope=1))
    np.testing.assert_array_equal(rescaled, stored)


def test_16bit_values_use_the_full_range(tmp_path):
    pixels = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16)
    image = read_image(write_dicom(tmp_path / "16.dcm", pixels, bits_stored=16))
    np.testing.assert_array_equal(image, [[0, 128], [255, 64]])


def test_signed_pixels(tmp_path):
    pixels = np.array([[-1000, 0], [1000, 500]], dtype=np.int16)
    image = read_image(write_dicom(tmp_path / "s.dcm", pixels, bits_stored=16, signed=True))
    np.testing.assert_array_equal(image, [[0, 128], [255, 191]])


def test_rle_lossless_is_read(tmp_path):
    import pydicom
    from pydicom.uid import RLELossless

    plain = write_dicom(tmp_path / "plain.dcm", RAMP, "MONOCHROME1")
    dataset = pydicom.dcmread(plain)
    dataset.compress(RLELossless)  # pydicom encodes RLE itself
    dataset.save_as(tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_image(tmp_path / "rle.dcm"), read_image(plain))


def _encapsulated(path, syntax, frame: bytes, shape, bits: int = 8):
    """A DICOM file whose pixel data is one compressed frame in transfer syntax ``syntax``."""
    import pydicom
    from pydicom.encaps import encapsulate

    dataset = pydicom.dcmread(write_dicom(path, np.zeros(shape, dtype=np.uint16), bits_stored=bits))
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path)
    return path


def test_jpeg_baseline_is_read_through_pillow(tmp_path):
    from pydicom.uid import JPEGBaseline8Bit

    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(120, 40, (24, 32)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    path = _encapsulated(tmp_path / "jpeg.dcm", JPEGBaseline8Bit, buffer.getvalue(), pixels.shape)
    image = read_image(path)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    expected = np.round((expected - expected.min()) * 255.0 / (expected.max() - expected.min()))
    assert image.shape == pixels.shape
    assert np.abs(image.astype(int) - expected).max() <= 1


def test_undecodable_compression_is_refused_naming_file_syntax_and_fix(tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless, JPEGLosslessSV1, JPEGLSLossless

    # the first of these that no installed plugin decodes (none of them, with covidxray's dependencies)
    syntax = next(s for s in (JPEGLSLossless, HTJ2KLossless, JPEGLosslessSV1) if not get_decoder(s).is_available)
    path = _encapsulated(tmp_path / "ls.dcm", syntax, b"\xff\xd8 compressed bytes \xff\xd9", (8, 8))
    with pytest.raises(ImageReadError) as raised:
        read_image(path)
    message = str(raised.value)
    assert str(path) in message and syntax.name in message and str(syntax) in message
    assert "pip install pyjpegls" in message or "pip install pylibjpeg" in message
    assert "convert" in message


def test_dicom_without_pixel_data_is_refused(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "nopixels.dcm", RAMP)
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(path)
    with pytest.raises(ImageReadError, match="without pixel data"):
        read_image(path)


def test_dicom_without_suffix_is_recognised_by_its_marker(tmp_path):
    path = write_dicom(tmp_path / "IM0001", RAMP)  # PACS exports often have no suffix
    expected = read_image(write_dicom(tmp_path / "same.dcm", RAMP))
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(read_image("upload", data=path.read_bytes()), expected)  # bytes, e.g. an upload


def test_training_reads_dicom_class_folders(tmp_path):
    root = tmp_path / "data"
    for label, value in (("covid", 4000), ("normal", 100)):
        for i in range(2):
            write_dicom(root / label / f"{label}{i}.dcm", RAMP % 7 + value - i)
    table = load_dataset(str(root))
    assert len(table) == 4 and set(table["label"]) == {"covid", "normal"}
    decoded = ImageCache(tmp_path / "cache").load(list(table["path"]), 8, progress=False)
    assert decoded.failed == {} and decoded.ok.all() and decoded.images.shape == (4, 8, 8)
    assert decoded.images.std() > 0



def test_pydicom_logs_nothing_to_the_root_logger(tmp_path):
    """covidxray reports the failure (one ImageReadError); pydicom's own records and tracebacks
    do not reach the handlers of an application's root logger (caplog cannot tell: pytest hooks
    its handler onto non-propagating loggers too)."""
    import logging

    path = _jpeg_without_scan(tmp_path / "noscan.dcm")
    reached = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = reached.append
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with pytest.raises(ImageReadError) as raised:
            read_image(path)
    finally:
        root.removeHandler(handler)
    assert "\n" not in str(raised.value) and "cannot decode DICOM pixel data" in str(raised.value)
    assert [r.name for r in reached if r.name.startswith("pydicom")] == []


def test_quiet_predict_on_a_corrupt_dicom_prints_one_line(tmp_path):
    import subprocess
    import sys

    from helpers import build_run

    run = build_run(tmp_path / "run")
    path = _jpeg_without_scan(tmp_path / "noscan.dcm")
    result = subprocess.run([sys.executable, "-m", "covidxray", "--quiet", "predict", "--run", str(run), str(path)],
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"covidxray: skipped {path}: cannot decode DICOM pixel data"), lines
