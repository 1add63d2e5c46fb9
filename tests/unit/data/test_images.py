"""Tests for covidxray.data.images: decoding every kind of file into 8-bit grayscale."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from covidxray.data.images import is_image_path, pixel_digest, read_image, resize_square
from covidxray.errors import CovidXrayError, ImageReadError
from helpers import gray, traced_peak, write_dicom, write_image


def _check_gray8(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.ndim == 2
    assert image.dtype == np.uint8
    assert image.shape == shape


def test_grayscale_png_round_trips(tmp_path):
    pixels = gray(1, (6, 9))
    image = read_image(write_image(tmp_path / "g.png", pixels))
    _check_gray8(image, (6, 9))
    np.testing.assert_array_equal(image, pixels)


def test_rgb_png_is_luminance(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1, :] = (200, 200, 200)  # gray stays gray
    image = read_image(write_image(tmp_path / "rgb.png", rgb))
    _check_gray8(image, (2, 3))
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(image, expected)
    assert image[0, 1] > image[0, 0] > image[0, 2]  # green is brightest, blue darkest
    assert (image[1] == 200).all()


def test_rgba_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white everywhere ...
    rgba[0, 0, 3] = 255  # ... opaque here
    rgba[0, 1, 3] = 0  # ... fully transparent here
    rgba[1, :, 3] = 128  # ... half transparent here
    image = read_image(write_image(tmp_path / "rgba.png", rgba))
    _check_gray8(image, (2, 2))
    assert image[0, 0] == 255
    assert image[0, 1] == 0
    assert 120 <= image[1, 0] <= 136


def test_palette_png(tmp_path):
    palette_image = Image.new("P", (3, 1))
    palette_image.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * (768 - 9))
    for x, index in enumerate((0, 1, 2)):
        palette_image.putpixel((x, 0), index)
    path = tmp_path / "p.png"
    palette_image.save(path)
    assert Image.open(path).mode == "P"
    image = read_image(path)
    _check_gray8(image, (1, 3))
    red = int(np.asarray(Image.new("RGB", (1, 1), (255, 0, 0)).convert("L"))[0, 0])
    np.testing.assert_array_equal(image, [[0, 255, red]])


def test_palette_png_with_transparency_is_on_black(tmp_path):
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([255, 255, 255] * 256)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    path = tmp_path / "pt.png"
    palette_image.save(path, transparency=1)
    np.testing.assert_array_equal(read_image(path), [[255, 0]])


def test_16bit_png_is_scaled_to_full_range(tmp_path):
    pixels = np.array([[100, 1100], [2100, 4100]], dtype=np.uint16)  # 12-bit data in a 16-bit PNG
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I;16")
    image = read_image(path)
    _check_gray8(image, (2, 2))
    assert image.min() == 0 and image.max() == 255
    np.testing.assert_array_equal(image, [[0, 64], [128, 255]])


def test_16bit_constant_png_is_black_not_an_error(tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((3, 3), 777, dtype=np.uint16)).save(path)
    image = read_image(path)
    _check_gray8(image, (3, 3))
    assert (image == 0).all()


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(path)  # no ink: white
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(tmp_path / "black.jpg")  # full black ink
    assert Image.open(path).mode == "CMYK"
    white, black = read_image(path), read_image(tmp_path / "black.jpg")
    _check_gray8(white, (8, 8))
    assert white.min() >= 250
    assert black.max() <= 5


def test_plain_jpeg(tmp_path):
    pixels = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    path = write_image(tmp_path / "x.jpeg", pixels, quality=95)
    image = read_image(path)
    _check_gray8(image, (16, 16))
    assert np.abs(image.astype(int) - pixels.astype(int)).max() <= 8  # lossy, but close

    rgb_path = write_image(tmp_path / "rgb.JPG", np.stack([pixels] * 3, axis=-1), quality=95)
    _check_gray8(read_image(rgb_path), (16, 16))


def test_truncated_png_raises_naming_the_file(tmp_path):
    good = write_image(tmp_path / "good.png", gray(3, (64, 64)))
    data = good.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as raised:
        read_image(path)
    assert str(path) in str(raised.value)
    assert raised.value.path == str(path)
    assert isinstance(raised.value, CovidXrayError)


def test_text_file_named_png_raises_naming_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError) as raised:
        read_image(path)
    assert str(path) in str(raised.value)


def test_missing_file_raises(tmp_path):
    path = tmp_path / "absent.png"
    with pytest.raises(ImageReadError) as raised:
        read_image(path)
    assert str(path) in str(raised.value)
    assert "no such file" in str(raised.value)


def test_a_fifo_a_device_or_a_folder_is_named_as_such_and_not_read(tmp_path):
    """Issue 30: one check (require_regular_file) for predict and lungs segment; before, a FIFO read 'no such file'."""
    import os

    from covidxray.data.images import read_file_bytes

    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "device.png").symlink_to("/dev/null")  # refused from its kind, never opened
    (tmp_path / "folder.png").mkdir()
    for name, kind in (("pipe.png", "a FIFO (named pipe)"), ("device.png", "a device"), ("folder.png", "a folder")):
        for read in (read_image, read_file_bytes):
            with pytest.raises(ImageReadError, match=re.escape(f"{name}: not a regular file ({kind}); not read; give")):
                read(tmp_path / name)
    write_image(tmp_path / "ok.png", gray(0))
    (tmp_path / "link.png").symlink_to(tmp_path / "ok.png")  # a link to an image is read
    assert read_image(tmp_path / "link.png").shape == (8, 8)


def test_folder_is_not_an_image(tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageReadError):
        read_image(folder)


# --- DICOM ---------------------------------------------------------------------------------


DICOM_PIXELS = np.array([[0, 1024, 2048], [3072, 4095, 4095]], dtype=np.uint16)  # 12-bit


def test_dicom_monochrome2_12bit(tmp_path):
    image = read_image(write_dicom(tmp_path / "m2.dcm", DICOM_PIXELS, "MONOCHROME2"))
    _check_gray8(image, DICOM_PIXELS.shape)
    assert image[0, 0] == 0 and image[1, 2] == 255  # scaled to the full 8-bit range
    np.testing.assert_array_equal(image, np.round(DICOM_PIXELS / 4095 * 255).astype(np.uint8))


def test_dicom_monochrome1_is_inverted(tmp_path):
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", DICOM_PIXELS, "MONOCHROME2"))
    mono1 = read_image(write_dicom(tmp_path / "m1.DICOM", DICOM_PIXELS, "MONOCHROME1"))
    _check_gray8(mono1, DICOM_PIXELS.shape)
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono1[0, 0] == 255  # zero is white in MONOCHROME1


def test_corrupt_dicom_raises_naming_the_file(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(ImageReadError) as raised:
        read_image(path)
    assert str(path) in str(raised.value)


# --- resize, digest, suffixes --------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 30), (10, 70), (32, 32)])
def test_resize_square(shape):
    image = resize_square(gray(4, shape), 32)
    assert image.shape == (32, 32)
    assert image.dtype == np.uint8


def test_resize_square_keeps_a_constant_image_constant():
    image = resize_square(np.full((50, 20), 77, dtype=np.uint8), 16)
    assert (image == 77).all()


def test_pixel_digest_same_pixels_in_png_and_bmp(tmp_path):
    pixels = gray(5, (12, 10))
    png = read_image(write_image(tmp_path / "a.png", pixels))
    bmp = read_image(write_image(tmp_path / "a.bmp", pixels))
    assert tmp_path.joinpath("a.png").read_bytes() != tmp_path.joinpath("a.bmp").read_bytes()
    assert pixel_digest(png) == pixel_digest(bmp)


def test_pixel_digest_differs_for_different_pixels():
    pixels = gray(6, (8, 8))
    changed = pixels.copy()
    changed[3, 3] ^= 1
    assert pixel_digest(pixels) != pixel_digest(changed)
    # same bytes, other shape: a different picture
    assert pixel_digest(pixels) != pixel_digest(pixels.reshape(4, 16))


def test_is_image_path(tmp_path):
    assert is_image_path(tmp_path / "x.PNG")
    assert is_image_path(tmp_path / "x.jpeg")
    assert is_image_path(tmp_path / "x.dcm")
    assert not is_image_path(tmp_path / "x.txt")
    assert not is_image_path(tmp_path / "manifest.csv")


# --- size limit and memory (issue 12) ------------------------------------------------------


def _refuse_decoding(monkeypatch):
    """Make any Pillow decode fail the test: a refusal must come from the header alone."""
    from PIL import ImageFile

    def decode(self, *args, **kwargs):
        raise AssertionError(f"{self.format} image of {self.size} decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)


@pytest.mark.parametrize("name, pixels", [
    ("gray.png", np.zeros((64, 65), dtype=np.uint8)),
    ("deep.png", np.zeros((64, 65), dtype=np.uint16)),
    ("deep.tif", np.zeros((64, 65), dtype=np.int32)),
    ("rgba.png", np.zeros((64, 65, 4), dtype=np.uint8)),
    ("photo.jpg", np.zeros((64, 65, 3), dtype=np.uint8)),
])
def test_images_over_max_pixels_are_refused_from_their_header(tmp_path, monkeypatch, name, pixels):
    from covidxray.data import images

    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64, raising=False)
    at_limit = read_image(write_image(tmp_path / f"ok-{name}", pixels[:, :64]))  # exactly at the limit: read
    assert at_limit.shape == (64, 64)
    path = write_image(tmp_path / name, pixels)
    _refuse_decoding(monkeypatch)
    with pytest.raises(ImageReadError) as raised:
        read_image(path)
    message = str(raised.value)
    assert message.startswith(str(path)) and "65 x 64 pixels" in message and "over the limit" in message
    assert "MAX_PIXELS" in message and "downscale" in message


def test_a_small_png_declaring_88_megapixels_is_refused_without_decoding(tmp_path, monkeypatch):
    # issue 12: a 212 KB 16-bit PNG of 9,400 x 9,400 cost 2 GB a request; this one is a few hundred bytes
    from helpers import png_declaring

    data = png_declaring(9400, 9400)
    assert len(data) < 2000
    _refuse_decoding(monkeypatch)
    with pytest.raises(ImageReadError) as raised:
        read_image("upload.png", data=data)
    assert "9,400 x 9,400 pixels (88.4 Mpx)" in str(raised.value) and "50 Mpx" in str(raised.value)


def test_formats_whose_decoded_size_the_header_hides_are_not_opened(tmp_path):
    path = tmp_path / "icon.png"
    Image.fromarray(gray(7, (16, 16))).save(path, format="ICO")  # an icon picks its size when decoded
    with pytest.raises(ImageReadError, match="not an image file"):
        read_image(path)


@pytest.mark.parametrize("name, pixels", [
    ("deep.png", np.random.default_rng(0).integers(0, 65536, (1500, 2000), dtype=np.uint16)),
    ("deep.tif", np.random.default_rng(1).integers(-2**31, 2**31 - 1, (1500, 2000), dtype=np.int32)),
    ("float.tif", np.random.default_rng(2).normal(0, 1e3, (1500, 2000)).astype(np.float32)),
])
def test_deep_images_are_scaled_without_full_size_float_copies(tmp_path, monkeypatch, name, pixels):
    from covidxray.data import images

    monkeypatch.setattr(images, "_BAND_PIXELS", 1 << 16, raising=False)  # many bands
    path = write_image(tmp_path / name, pixels)
    image, peak = traced_peak(lambda: read_image(path))
    # the same pixels as scaling the whole image in float64 ...
    values = pixels.astype(np.float64)
    low, high = values.min(), values.max()
    np.testing.assert_array_equal(image, np.round((values - low) * (255.0 / (high - low))).astype(np.uint8))
    # ... with no full-size float64 copy: one would be 8 bytes a pixel
    assert peak < 3 * pixels.size, f"{peak / pixels.size:.1f} bytes a pixel"


def test_8bit_images_are_converted_in_bands_to_the_same_pixels(tmp_path, monkeypatch):
    from covidxray.data import images

    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (300, 200, 4), dtype=np.uint8)
    palette = Image.fromarray(rng.integers(0, 256, (300, 200), dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "p.png", transparency=5)
    whole = {name: read_image(path) for name, path in (("rgba", write_image(tmp_path / "rgba.png", rgba)),
                                                        ("p", tmp_path / "p.png"))}
    monkeypatch.setattr(images, "_BAND_PIXELS", 1000)  # bands of 5 rows
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), whole["rgba"])
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), whole["p"])
    composited = Image.alpha_composite(Image.new("RGBA", (200, 300), (0, 0, 0, 255)), Image.fromarray(rgba))
    np.testing.assert_array_equal(whole["rgba"], np.asarray(composited.convert("L")))


def test_decodes_at_once_hold_at_most_the_budget_of_pixels_whatever_the_threads(tmp_path, monkeypatch):
    """Issue 30: seven 50 Mpx files in one predict peaked at 1.8 GB (four reader threads, four large
    decodes at once). The process's decode budget lets large files decode one at a time, small ones
    side by side; the DICOM path holds it too."""
    import threading
    import time

    import covidxray.data.images as images

    budget = images.DecodeBudget(total=100 * 100)
    monkeypatch.setattr(images, "DECODING", budget)
    inside, peak, lock = [0], [0], threading.Lock()
    convert = images._to_gray8

    def counted(image):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return convert(image)

    monkeypatch.setattr(images, "_to_gray8", counted)

    def decode_all(paths):
        peak[0] = 0
        threads = [threading.Thread(target=read_image, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return peak[0]

    large = [write_image(tmp_path / f"large{i}.png", gray(i, (80, 80))) for i in range(4)]  # 64% of the budget each
    small = [write_image(tmp_path / f"small{i}.png", gray(i, (30, 30))) for i in range(4)]  # 9% each
    assert decode_all(large) == 1
    assert decode_all(small) > 1  # small files are not serialised
    assert budget._used == 0
    held = []
    monkeypatch.setattr(images, "_dicom_frame_to_gray8", lambda *a: held.append(budget._used) or np.zeros((16, 16), np.uint8))
    read_image(write_dicom(tmp_path / "x.dcm", np.arange(256, dtype=np.uint16).reshape(16, 16)))
    assert held == [16 * 16] and budget._used == 0


def test_the_heap_is_trimmed_after_large_decodes_and_on_release(monkeypatch):
    """Issue 30: a server that decoded six large uploads kept 1.6 GB; the freed pixels go back to the system
    when the last large decode ends, and again when the web page has done with the full-size upload."""
    import covidxray.data.images as images

    trims = []
    monkeypatch.setattr(images, "_trim_heap", lambda: trims.append(1))
    budget = images.DecodeBudget(total=800)
    with budget.hold(50):  # small: no trim
        pass
    budget.release()
    assert trims == []
    with budget.hold(700):
        with budget.hold(50):
            pass
        assert trims == []  # the large one still decoding
    assert trims == [1]
    budget.release()  # after the caller's own work on the pixels
    budget.release()  # nothing large since
    assert trims == [1, 1]
    monkeypatch.undo()
    images._trim_heap()  # the real one: no error, with or without glibc
