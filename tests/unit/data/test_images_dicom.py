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
from helpers import traced_peak, write_dicom

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
    decoded = ImageCache(tmp_path / "cache").load(list(table["path"]), 8)
    assert decoded.failed == {} and decoded.ok.all() and decoded.images.shape == (4, 8, 8)
    assert decoded.images.std() > 0


def _jpeg_without_scan(path):
    """A JPEG Baseline DICOM whose frame has a valid header but no scan: Pillow fails while
    decoding it, inside pydicom, which logs that failure with a traceback."""
    from pydicom.uid import JPEGBaseline8Bit

    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 32), 120, dtype=np.uint8)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    return _encapsulated(path, JPEGBaseline8Bit, jpeg[:jpeg.index(b"\xff\xda")] + b"\xff\xd9", (24, 32))


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


# --- size limit and memory (issue 12) ------------------------------------------------------


def _refuse_decoding(monkeypatch):
    """Make any pydicom pixel decode fail the test: a refusal must come from the header alone."""
    from pydicom.pixels.decoders.base import Decoder

    def decode(self, *args, **kwargs):
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(Decoder, "as_array", decode)
    monkeypatch.setattr(Decoder, "iter_array", decode)


def _rle(path, pixels, **attributes):
    """An RLE Lossless DICOM file of ``pixels`` (pydicom encodes it), then ``attributes`` set as they are."""
    import pydicom
    from pydicom.uid import RLELossless

    dataset = pydicom.dcmread(write_dicom(path, pixels))
    dataset.compress(RLELossless)
    for name, value in attributes.items():
        setattr(dataset, name, value)
    dataset.save_as(path)
    return path


def test_a_dicom_declaring_182_megapixels_is_refused_from_its_header(tmp_path, monkeypatch):
    # issue 12: a 2.8 MB RLE DICOM declaring 182 Mpx cost 4.3 GB; Pillow's pixel limit never applied to DICOM
    rle = _rle(tmp_path / "rle.dcm", RAMP, Rows=13500, Columns=13500)
    native = write_dicom(tmp_path / "native.dcm", RAMP, Rows=13500, Columns=13500)
    _refuse_decoding(monkeypatch)
    for path in (rle, native):
        with pytest.raises(ImageReadError) as raised:
            read_image(path)
        message = str(raised.value)
        assert message.startswith(str(path)) and "13,500 x 13,500 pixels (182.2 Mpx" in message
        assert "over the limit of 50 Mpx" in message


def test_dicom_over_max_pixels_or_decoded_bytes_is_refused(tmp_path, monkeypatch):
    from covidxray.data import images

    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64, raising=False)
    ok = read_image(write_dicom(tmp_path / "ok.dcm", np.zeros((64, 64), dtype=np.uint16)))  # at the limit
    assert ok.shape == (64, 64)
    over = write_dicom(tmp_path / "over.dcm", np.zeros((64, 65), dtype=np.uint16))
    rle_over = _rle(tmp_path / "rle.dcm", np.zeros((65, 64), dtype=np.uint16))
    # 60 x 60 pixels, but three 16-bit samples each: 21,600 bytes decoded, over 4 bytes x 4,096 pixels
    colour = write_dicom(tmp_path / "colour.dcm", np.zeros((60, 60), dtype=np.uint16), SamplesPerPixel=3,
                         PhotometricInterpretation="RGB", PlanarConfiguration=0,
                         PixelData=np.zeros((60, 60, 3), dtype="<u2").tobytes())
    _refuse_decoding(monkeypatch)
    for path, expected in ((over, "65 x 64 pixels"), (rle_over, "64 x 65 pixels"), (colour, "0 MB decoded")):
        with pytest.raises(ImageReadError) as raised:
            read_image(path)
        assert expected in str(raised.value) and "over the limit" in str(raised.value), str(raised.value)


def test_an_rle_segment_longer_than_the_frame_is_refused_before_decoding(tmp_path):
    # an 8 x 8 image whose RLE segments expand 64 times their size: pydicom decodes a segment whole
    # before checking its length (32 KB here, 16 MB in a 32 MB upload: a gigabyte)
    import struct

    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    bomb = bytes((0x81, 7)) * 256  # 256 runs of 128 bytes each
    frame = struct.pack("<16I", 2, 64, 64 + len(bomb), *([0] * 13)) + bomb + bomb
    dataset = pydicom.dcmread(write_dicom(tmp_path / "bomb.dcm", np.zeros((8, 8), dtype=np.uint16), bits_stored=16))
    dataset.file_meta.TransferSyntaxUID = RLELossless
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(tmp_path / "bomb.dcm")
    with pytest.raises(ImageReadError, match="RLE segment 1 decodes to more than the 8 x 8 pixels"):
        read_image(tmp_path / "bomb.dcm")


def test_a_jpeg_frame_larger_than_the_header_says_is_refused(tmp_path, monkeypatch):
    from pydicom.uid import JPEGBaseline8Bit

    from covidxray.data import images

    monkeypatch.setattr(images, "MAX_PIXELS", 32 * 32, raising=False)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((48, 64), dtype=np.uint8)).save(buffer, format="JPEG")
    path = _encapsulated(tmp_path / "liar.dcm", JPEGBaseline8Bit, buffer.getvalue(), (8, 8))  # header: 8 x 8
    _refuse_decoding(monkeypatch)
    with pytest.raises(ImageReadError, match="its JPEG Baseline .* frame: 64 x 48 pixels .* over the limit"):
        read_image(path)


def test_a_deflated_data_set_is_refused_not_inflated(tmp_path):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    dataset = pydicom.dcmread(write_dicom(tmp_path / "plain.dcm", RAMP))
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # pydicom inflates it whole, unbounded
    dataset.save_as(tmp_path / "deflated.dcm")
    with pytest.raises(ImageReadError, match="deflated DICOM data set"):
        read_image(tmp_path / "deflated.dcm")


def test_only_the_first_frame_is_read_and_decoded(tmp_path, monkeypatch):
    import pydicom

    from covidxray.data import images

    frames = np.stack([np.full((500, 400), 100 * i, dtype=np.uint16) + RAMP[0, :1] for i in range(12)])
    frames[0] = np.arange(500 * 400, dtype=np.uint16).reshape(500, 400) % 4096
    dataset = pydicom.dcmread(write_dicom(tmp_path / "frames.dcm", frames[0]))
    dataset.NumberOfFrames = len(frames)
    dataset.PixelData = frames.astype("<u2").tobytes()
    dataset.save_as(tmp_path / "frames.dcm")
    monkeypatch.setattr(images, "_BAND_PIXELS", 1 << 14, raising=False)
    image, peak = traced_peak(lambda: read_image(tmp_path / "frames.dcm"))
    np.testing.assert_array_equal(image, read_image(write_dicom(tmp_path / "first.dcm", frames[0])))
    assert peak < 3 * frames[0].nbytes, f"{peak / frames[0].nbytes:.1f} frames in memory"  # 12 frames are on disk


def test_window_and_rescale_are_applied_in_bands_without_float_copies(tmp_path, monkeypatch):
    from covidxray.data import images

    pixels = np.random.default_rng(0).integers(0, 65536, (1500, 1000)).astype(np.uint16)
    path = write_dicom(tmp_path / "w.dcm", pixels, bits_stored=16, WindowCenter=30000, WindowWidth=40000,
                       RescaleSlope=1.5, RescaleIntercept=-1024)
    whole = read_image(path)
    monkeypatch.setattr(images, "_BAND_PIXELS", 1 << 14, raising=False)
    banded, peak = traced_peak(lambda: read_image(path))
    np.testing.assert_array_equal(banded, whole)
    assert peak < 4 * pixels.size, f"{peak / pixels.size:.1f} bytes a pixel"  # float64 would be 8 or more
