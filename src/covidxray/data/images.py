"""Read one X-ray file (PNG, JPEG, DICOM, ...) into an 8-bit grayscale array.

Every mode Pillow knows is brought to 8-bit grayscale the same way: palette and RGB(A) through
luminance (transparent pixels on black), 16-bit and 32-bit integer images scaled by their own
range, CMYK JPEG through RGB. DICOM goes through pydicom: rescale slope/intercept and the VOI LUT
or window applied, 12- and 16-bit values scaled by their range, MONOCHROME1 inverted, compressed
pixel data decoded where an installed decoder can (RLE natively, JPEG and JPEG 2000 through
Pillow) and otherwise refused naming the transfer syntax and the package to install. A file that cannot be decoded raises :class:`ImageReadError`
naming the file.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidxray.errors import ImageReadError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"})


def is_image_path(path: Path) -> bool:
    """True for file names covidxray reads as images (by suffix, case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Decode ``path`` into a ``(height, width)`` uint8 array.

    ``data``: the file's bytes, when the caller has already read them (the file is then not
    opened again); ``path`` still names the file in errors. DICOM is recognised by its suffix
    or, without one, by its ``DICM`` marker; it is read with pydicom (see :func:`_read_dicom`).
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise ImageReadError(path, "no such file", "check the path")
    source = path if data is None else io.BytesIO(data)
    if looks_like_dicom(path, data):
        return _read_dicom(path, source)
    try:
        with Image.open(source) as image:
            image.load()
            return _to_gray8(image)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file Pillow can read") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"too large to decode safely ({error})", "shrink the image") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from None


def _to_gray8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _scale_to_uint8(np.asarray(image, dtype=np.float64))
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if mode == "CMYK":
        image = image.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale any numeric array linearly onto 0..255 by its own minimum and maximum."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


#: pip packages that let pydicom decode a compressed transfer syntax it cannot decode alone
#: (by the start of the syntax's name); the fallback names the usual set.
_DICOM_DECODERS = (
    ("JPEG-LS", "pyjpegls"),
    ("JPEG 2000", "pylibjpeg pylibjpeg-openjpeg"),
    ("High-Throughput JPEG 2000", "pylibjpeg pylibjpeg-openjpeg"),
    ("JPEG", "pylibjpeg pylibjpeg-libjpeg"),
    ("RLE", "pylibjpeg pylibjpeg-rle"),
)


def looks_like_dicom(path: Path, data: bytes | None = None) -> bool:
    """DICOM by suffix (``.dcm``, ``.dicom``) or by the ``DICM`` marker after the 128-byte preamble."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    if data is None:
        try:
            with open(path, "rb") as file:
                data = file.read(132)
        except OSError:
            return False
    return data[128:132] == b"DICM"


def _read_dicom(path: Path, source) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise ImageReadError(path, "reading DICOM needs pydicom", "pip install pydicom") from None
    try:
        dataset = pydicom.dcmread(source)
    except Exception as error:  # pydicom raises many types for data that is not DICOM
        raise ImageReadError(path, f"not a readable DICOM file ({error})", "replace it, or convert it to PNG") from None
    _require_decoder(path, dataset)
    try:
        pixels = dataset.pixel_array
        if pixels.ndim == 3 and getattr(dataset, "SamplesPerPixel", 1) == 1:
            pixels = pixels[0]  # multi-frame: the first frame
        if pixels.ndim == 3:  # colour DICOM: luminance
            pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
        else:  # stored values -> modality units (rescale slope/intercept) -> display window (VOI LUT)
            pixels = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
    except Exception as error:  # pydicom raises many types for bad, odd or compressed data
        raise ImageReadError(
            path,
            f"cannot decode DICOM pixel data ({error})",
            "convert it to PNG, or install the decoder pydicom names (pylibjpeg, gdcm)",
        ) from None
    image = _scale_to_uint8(np.asarray(pixels, dtype=np.float64))
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        image = 255 - image
    return image


def _require_decoder(path: Path, dataset) -> None:
    """Refuse compressed pixel data that no installed decoder reads, naming the syntax and the fix."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in dataset:
        raise ImageReadError(path, "DICOM file without pixel data (not an image)", "give an image DICOM file")
    if syntax is None or not syntax.is_compressed:
        return
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
        available = False
    if not available:
        packages = next((pip for prefix, pip in _DICOM_DECODERS if syntax.name.startswith(prefix)),
                        "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
        raise ImageReadError(
            path,
            f"DICOM pixel data compressed as {syntax.name} ({syntax}), which no installed decoder reads",
            f"pip install {packages}, or convert the file to PNG or uncompressed DICOM",
        )


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 grayscale image to ``size`` x ``size`` (antialiased bilinear, as trained)."""
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def decode_resized(path: str | Path, size: int, data: bytes | None = None) -> tuple[np.ndarray, str]:
    """The one decode step every reader uses (cache, shards, predict): the file decoded
    (:func:`read_image`), resized to ``size`` x ``size`` and the digest of its full-size pixels."""
    full = read_image(path, data)
    return resize_square(full, size), pixel_digest(full)


def pixel_digest(image: np.ndarray) -> str:
    """A digest of the decoded pixels: equal for the same picture saved in two files."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()

# pydicom logs, with a traceback, each failure that covidxray reports itself as one ImageReadError
# (one line from the command line), and its warnings; an application that configures the root
# logger (covidxray's command line does) would print them all. They stop at pydicom's own logger
# instead, where pydicom.config.debug() still shows them.
logging.getLogger("pydicom").propagate = False
