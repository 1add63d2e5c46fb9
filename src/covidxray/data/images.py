"""Read one X-ray file (PNG, JPEG, DICOM, ...) into an 8-bit grayscale array.

Every mode Pillow knows is brought to 8-bit grayscale the same way: palette and RGB(A) through
luminance (transparent pixels on black), 16-bit and 32-bit integer images scaled by their own
range, CMYK JPEG through RGB. A file that cannot be decoded raises :class:`ImageReadError`
naming the file.
"""

from __future__ import annotations

import io
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
    opened again); ``path`` still names the file in errors and picks DICOM by its suffix.
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise ImageReadError(path, "no such file", "check the path")
    source = path if data is None else io.BytesIO(data)
    if path.suffix.lower() in (".dcm", ".dicom"):
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


def _read_dicom(path: Path, source) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise ImageReadError(path, "reading DICOM needs pydicom", "pip install pydicom") from None
    try:
        dataset = pydicom.dcmread(source)
        pixels = dataset.pixel_array
        if pixels.ndim == 3 and getattr(dataset, "SamplesPerPixel", 1) == 1:
            pixels = pixels[0]  # multi-frame: the first frame
        if pixels.ndim == 3:  # colour DICOM: luminance
            pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
        else:
            pixels = apply_voi_lut(pixels, dataset)
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


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 grayscale image to ``size`` x ``size`` (antialiased bilinear, as trained)."""
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def pixel_digest(image: np.ndarray) -> str:
    """A digest of the decoded pixels: equal for the same picture saved in two files."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()
