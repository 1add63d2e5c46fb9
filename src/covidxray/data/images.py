"""Read one X-ray file (PNG, JPEG, DICOM, ...) into an 8-bit grayscale array.

Every mode Pillow knows is brought to 8-bit grayscale the same way: palette and RGB(A) through
luminance (transparent pixels on black), 16-bit and 32-bit integer images scaled by their own
range, CMYK JPEG through RGB. DICOM goes through pydicom: rescale slope/intercept and the VOI LUT
or window applied, 12- and 16-bit values scaled by their range, MONOCHROME1 inverted, compressed
pixel data decoded where an installed decoder can (RLE natively, JPEG and JPEG 2000 through
Pillow) and otherwise refused naming the transfer syntax and the package to install. A file that cannot be decoded raises :class:`ImageReadError`
naming the file.

Memory is bounded whatever the file: its size is read from its header and an image over
:data:`MAX_PIXELS` is refused before a pixel is decoded (a 200 KB PNG can declare 88 Mpx); the
files decoded at once in a process, by every thread together (predict's readers, the cache's
workers, the web page's requests), hold at most :data:`MAX_PIXELS` pixels between them, so seven
50 Mpx files cost one at a time, not four (issue 30), while small X-rays still decode side by side; only
the first frame of a DICOM file is decoded; and 16- and 32-bit values, DICOM LUTs and colour are
converted to 8 bits a band of rows at a time at the input's own depth, so decoding an image costs
its decoded pixels plus a few tens of MB, never a full-size float64 copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import logging
import math
import struct
import threading
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidxray.errors import ImageReadError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"})

#: The most pixels covidxray decodes from one image, in any format, checked from the file's
#: header before decoding. The largest chest radiographs are about 4,300 x 3,500 = 15 Mpx (a
#: 43 x 35 cm detector at 100 micrometres; film digitised at 4,096 x 5,120 is 21 Mpx): 50 Mpx is
#: over twice any of them, and keeps the worst decode under about 400 MB (issue 12).
MAX_PIXELS = 50_000_000
#: The most bytes a pixel of the decoded frame may take at :data:`MAX_PIXELS` (4: Pillow's RGBA,
#: 32-bit and float modes): bounds colour and 32-bit DICOM too.
MAX_BYTES_PER_PIXEL = 4
_BAND_PIXELS = 1 << 20  # pixels converted to 8 bits at a time: 8 MB in float64
#: The formats Pillow may open (those of IMAGE_SUFFIXES): each decodes its first frame at the size
#: its header gives. Others (ICO, ICNS, EPS ...) decode a size the header does not show.
_PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "GIF", "WEBP")  # JPEG includes MPO


class DecodeBudget:
    """Pixels being decoded at once in this process, by all threads together, at most ``total``
    (default :data:`MAX_PIXELS`, read when asked): :meth:`hold` waits until its pixels fit. An image
    is never larger than the budget (:func:`_check_size` refuses it first), so each one gets its
    turn. When the last large decode ends, the C heap is trimmed (glibc's ``malloc_trim``): the
    freed pixels go back to the system instead of staying in the process (a server that decoded
    six large uploads kept 1.6 GB)."""

    def __init__(self, total: int | None = None):
        self._total, self._used, self._large = total, 0, 0
        self._decoded_large = False  # since the last release()
        self._free = threading.Condition()

    @property
    def total(self) -> int:
        return MAX_PIXELS if self._total is None else self._total

    @contextlib.contextmanager
    def hold(self, pixels: int):
        pixels = max(0, min(int(pixels), self.total))
        large = pixels >= self.total // 8
        with self._free:
            self._free.wait_for(lambda: self._used == 0 or self._used + pixels <= self.total)
            self._used += pixels
            self._large += large
            self._decoded_large |= large
        try:
            yield
        finally:
            with self._free:
                self._used -= pixels
                self._large -= large
                trim = large and self._large == 0
                self._free.notify_all()
            if trim:
                _trim_heap()

    def release(self) -> None:
        """Trim the C heap if a large image was decoded since the last call and none is being decoded:
        for a caller that worked on the full-size pixels after the decode (the web page's upload)."""
        with self._free:
            trim = self._decoded_large and self._large == 0
            self._decoded_large = self._decoded_large and not trim
        if trim:
            _trim_heap()


def _trim_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl without it, Windows): nothing to do
        pass


#: The process's decode budget (:class:`DecodeBudget`).
DECODING = DecodeBudget()


def is_image_path(path: Path) -> bool:
    """True for file names covidxray reads as images (by suffix, case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Decode ``path`` into a ``(height, width)`` uint8 array.

    ``data``: the file's bytes, when the caller has already read them (the file is then not
    opened again); ``path`` still names the file in errors. DICOM is recognised by its suffix
    or, without one, by its ``DICM`` marker; it is read with pydicom (see :func:`_read_dicom`).
    Images over :data:`MAX_PIXELS` are refused from their header, before any pixel is decoded.
    """
    path = Path(path)
    if data is None:
        require_regular_file(path)
    source = path if data is None else io.BytesIO(data)
    if looks_like_dicom(path, data):
        return _read_dicom(path, source)
    try:
        with Image.open(source, formats=_PILLOW_FORMATS) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            _check_size(path, width, height)
            with DECODING.hold(width * height):
                image.load()
                return _to_gray8(image)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file Pillow can read") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"too large to decode safely ({error})", "shrink the image") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from None


def require_regular_file(path: str | Path) -> None:
    """Raise :class:`ImageReadError` unless ``path`` is a regular file (a link to one is): a FIFO would
    block and a device (a link to /dev/zero) never end, so neither is opened, nor is a folder."""
    path = Path(path)
    if path.is_file():
        return
    if not path.exists():
        raise ImageReadError(path, "no such file", "check the path")
    from covidxray.files import kind_of

    raise ImageReadError(path, f"not a regular file ({kind_of(path.resolve())}); not read",
                         "give the image file itself")


def read_file_bytes(path: str | Path) -> bytes:
    """The bytes of the image file ``path``, refused unread if it is not a regular file
    (:func:`require_regular_file`)."""
    require_regular_file(path)
    return Path(path).read_bytes()


def _check_size(path: Path, width: int, height: int, bytes_per_pixel: int = 1, what: str = "") -> None:
    """Refuse an image of more than :data:`MAX_PIXELS` pixels, or whose decoded frame would take
    more than :data:`MAX_BYTES_PER_PIXEL` bytes a pixel at that limit, before decoding it."""
    pixels = width * height
    if pixels > MAX_PIXELS or pixels * bytes_per_pixel > MAX_BYTES_PER_PIXEL * MAX_PIXELS:
        decoded = f", {pixels * bytes_per_pixel / 1e6:,.0f} MB decoded" if bytes_per_pixel > 1 else ""
        raise ImageReadError(
            path,
            f"too large: {what}{width:,} x {height:,} pixels ({pixels / 1e6:,.1f} Mpx{decoded}) is over the limit of "
            f"{MAX_PIXELS / 1e6:g} Mpx ({MAX_BYTES_PER_PIXEL * MAX_PIXELS / 1e6:,.0f} MB decoded) an image "
            "(covidxray.data.images.MAX_PIXELS)",
            "downscale it: chest X-rays are at most about 15 Mpx",
        )


def _row_bands(height: int, width: int):
    """Slices of rows that together cover ``height`` rows, about :data:`_BAND_PIXELS` pixels each."""
    step = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, step):
        yield slice(top, min(height, top + step))


def _crop_rows(image: Image.Image, rows: slice) -> Image.Image:
    if rows.start == 0 and rows.stop == image.height:
        return image
    return image.crop((0, rows.start, image.width, rows.stop))


def _to_gray8(image: Image.Image) -> np.ndarray:
    """The loaded Pillow ``image`` as uint8 grayscale, converted a band of rows at a time at its
    own depth: never a full-size float or RGBA copy beside the decoded image."""
    width, height = image.size
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _scale_to_uint8(height, width, lambda rows: np.asarray(_crop_rows(image, rows)))
    gray = np.empty((height, width), dtype=np.uint8)
    for rows in _row_bands(height, width):
        gray[rows] = np.asarray(_band_to_gray8(_crop_rows(image, rows)), dtype=np.uint8)
    return gray


def _band_to_gray8(image: Image.Image) -> Image.Image:
    """Any 8-bit mode to ``L``, pixel by pixel (so a band gives the same pixels as the whole)."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if mode == "CMYK":
        image = image.convert("RGB")
    return image.convert("L")


def _scale_to_uint8(height: int, width: int, band) -> np.ndarray:
    """Scale an image linearly onto 0..255 by its own minimum and maximum, a band of rows at a
    time: ``band(rows)`` gives those rows' values (any numeric dtype). The same arithmetic as
    scaling the whole image in float64, without the full-size float64 copies."""
    low, high = math.inf, -math.inf
    for rows in _row_bands(height, width):
        values = band(rows)
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    image = np.zeros((height, width), dtype=np.uint8)
    if not high > low:
        return image
    scale = 255.0 / (high - low)
    for rows in _row_bands(height, width):
        image[rows] = np.round((np.asarray(band(rows), dtype=np.float64) - low) * scale).astype(np.uint8)
    return image


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
    """A DICOM file's first frame as uint8 grayscale, its size checked before anything is decoded.

    The header is read first (up to the pixel data) and the size checked from Rows, Columns,
    Samples per Pixel and Bits Allocated and, for compressed data, from the first frame's own
    codestream (JPEG, JPEG 2000) or RLE segments; then only the first frame is decoded, at its own
    depth, and the modality LUT (rescale), the VOI LUT (window), YBR to RGB and the scaling to 8
    bits are applied a band of rows at a time (pydicom computes them in float).
    """
    try:
        import pydicom
        from pydicom.pixels import get_decoder, pixel_array
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise ImageReadError(path, "reading DICOM needs pydicom", "pip install pydicom") from None
    with (contextlib.ExitStack() as held,
          open(path, "rb") if isinstance(source, Path) else contextlib.nullcontext(source) as file):
        header = _dicom_header(path, file, pydicom)
        try:
            rows, columns = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
            samples, bits = int(header.get("SamplesPerPixel") or 1), int(header.get("BitsAllocated") or 16)
        except (TypeError, ValueError) as error:
            raise ImageReadError(path, f"unreadable image size in the DICOM header ({error})",
                                 "replace it, or convert it to PNG") from None
        _check_size(path, columns, rows, samples * max(1, -(-bits // 8)))
        held.enter_context(DECODING.hold(rows * columns))  # until the frame is 8-bit
        syntax = header.file_meta.TransferSyntaxUID
        photometric = str(header.get("PhotometricInterpretation", ""))
        file.seek(0)
        try:
            if syntax.is_encapsulated:  # the compressed data is read (at most the file's size), one frame decoded
                dataset = pydicom.dcmread(file)
                _check_compressed_frame(path, dataset, syntax, rows, columns)
                # raw: pydicom's YBR -> RGB works on the whole frame in float32; done in bands below
                frame, properties = get_decoder(syntax).as_array(dataset, index=0, raw=True)
                photometric = str(properties.get("photometric_interpretation", photometric))
            else:  # only the first frame's bytes are read
                # a view of the frame's bytes, without pydicom's copy, where no unused bits need masking
                frame = pixel_array(file, index=0, raw=True, view_only=int(header.get("BitsStored") or 0) == bits)
            image = _dicom_frame_to_gray8(frame, header, photometric)
        except ImageReadError:
            raise
        except Exception as error:  # pydicom raises many types for bad, odd or compressed data
            raise ImageReadError(
                path,
                f"cannot decode DICOM pixel data ({error})",
                "convert it to PNG, or install the decoder pydicom names (pylibjpeg, gdcm)",
            ) from None
    if photometric == "MONOCHROME1":
        np.subtract(255, image, out=image)
    return image


def _dicom_frame_to_gray8(frame: np.ndarray, header, photometric: str) -> np.ndarray:
    """One decoded frame to uint8, a band of rows at a time: colour through luminance (YBR first
    to RGB, as pydicom does), grayscale through the modality LUT (rescale slope and intercept)
    and the VOI LUT (display window), then scaled by its own range."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    if frame.ndim == 3:
        weights = np.array([0.299, 0.587, 0.114])
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            def band(rows):
                return convert_color_space(frame[rows], "YBR_FULL", "RGB")[..., :3] @ weights
        else:
            def band(rows):
                return frame[rows, :, :3] @ weights
    else:
        def band(rows):
            return apply_voi_lut(apply_modality_lut(frame[rows], header), header)
    return _scale_to_uint8(frame.shape[0], frame.shape[1], band)


_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010), little and big endian


def _dicom_header(path: Path, file, pydicom):
    """Everything before the pixel data; refuses a file that is not DICOM, has no pixel data, or
    whose pixel data no installed decoder reads."""
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        read_preamble(file, False)
        syntax = _read_file_meta_info(file).get("TransferSyntaxUID")
        if syntax == DeflatedExplicitVRLittleEndian:  # pydicom would inflate it whole, with no limit
            raise ImageReadError(path, "a deflated DICOM data set (Deflated Explicit VR Little Endian), which "
                                 "covidxray does not inflate", "convert it to uncompressed DICOM or PNG")
        file.seek(0)
        header = pydicom.dcmread(file, stop_before_pixels=True)
    except ImageReadError:
        raise
    except Exception as error:  # pydicom raises many types for data that is not DICOM
        raise ImageReadError(path, f"not a readable DICOM file ({error})", "replace it, or convert it to PNG") from None
    if file.read(4) not in _PIXEL_DATA_TAGS:  # dcmread stopped at the pixel data, or read to the end
        raise ImageReadError(path, "DICOM file without pixel data (not an image)", "give an image DICOM file")
    if "TransferSyntaxUID" not in getattr(header, "file_meta", {}):
        raise ImageReadError(path, "DICOM file without a transfer syntax", "replace it, or convert it to PNG")
    _require_decoder(path, header)
    return header


def _check_compressed_frame(path: Path, dataset, syntax, rows: int, columns: int) -> None:
    """Refuse a compressed first frame that would decode to more than the header says: a JPEG or
    JPEG 2000 codestream of another size, or an RLE segment longer than a frame (RLE expands up
    to 64 times, and pydicom decodes a segment whole before checking its length)."""
    from pydicom.encaps import get_frame
    from pydicom.uid import RLELossless

    offsets = (dataset.get("ExtendedOffsetTable"), dataset.get("ExtendedOffsetTableLengths"))
    try:
        frames = max(1, int(dataset.get("NumberOfFrames") or 1))
        frame = get_frame(dataset.PixelData, 0, number_of_frames=frames,
                          extended_offsets=offsets if all(o is not None for o in offsets) else None)
    except Exception as error:
        raise ImageReadError(path, f"cannot read the first frame of the DICOM pixel data ({error})",
                             "replace it, or convert it to PNG") from None
    if syntax == RLELossless:
        too_long = _rle_overlong_segment(frame, rows * columns)
        if too_long is not None:
            raise ImageReadError(path, f"RLE segment {too_long} decodes to more than the {columns:,} x {rows:,} "
                                 "pixels the header declares", "replace it, or convert it to PNG")
        return
    size = _codestream_size(frame)
    if size is None:
        raise ImageReadError(path, f"no image size found in the first frame's {syntax.name} data",
                             "replace it, or convert it to PNG")
    width, height, components, depth = size
    _check_size(path, width, height, components * (2 if depth > 8 else 1), f"its {syntax.name} frame: ")


def _rle_overlong_segment(frame: bytes, length: int) -> int | None:
    """The number of the first RLE segment in ``frame`` that decodes to more than ``length`` bytes
    (plus one of padding), found by adding up its run lengths with nothing decoded; else None."""
    if len(frame) < 64:
        return None  # pydicom refuses it
    count, *offsets = struct.unpack("<16I", frame[:64])
    offsets = [o for o in offsets[:min(count, 15)]] + [len(frame)]
    for number, (start, stop) in enumerate(zip(offsets, offsets[1:]), start=1):
        position, decoded, stop = start, 0, min(stop, len(frame))
        while position < stop and decoded <= length + 1:
            header = frame[position]
            if header < 128:  # a literal run of header + 1 bytes
                decoded += header + 1
                position += header + 2
            elif header > 128:  # one byte repeated 257 - header times
                decoded += 257 - header
                position += 2
            else:
                position += 1
        if decoded > length + 1:
            return number
    return None


_JPEG_FRAME_MARKERS = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}  # SOF0..SOF15, JPEG-LS SOF55


def _codestream_size(frame: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, bits) declared by a JPEG or JPEG-LS frame header or a JPEG 2000
    SIZ marker segment; None where there is none."""
    if frame[:2] == b"\xff\xd8":  # JPEG, JPEG-LS: the markers up to the start of frame
        position = 2
        while position + 10 <= len(frame):
            if frame[position] != 0xFF:
                return None
            marker = frame[position + 1]
            if marker == 0xFF:  # fill byte
                position += 1
            elif marker in _JPEG_FRAME_MARKERS:
                depth, height, width, components = struct.unpack(">BHHB", frame[position + 4:position + 10])
                return width, height, components, depth
            elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
                position += 2
            else:
                position += 2 + struct.unpack(">H", frame[position + 2:position + 4])[0]
        return None
    start = frame.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ (also inside a JP2 file)
    if start < 0 or start + 42 > len(frame):
        return None
    x, y, x0, y0 = struct.unpack(">4I", frame[start + 8:start + 24])
    components = struct.unpack(">H", frame[start + 40:start + 42])[0]
    depth = (frame[start + 42] & 0x7F) + 1 if start + 43 <= len(frame) else 16
    return x - x0, y - y0, components, depth


def _require_decoder(path: Path, dataset) -> None:
    """Refuse compressed pixel data that no installed decoder reads, naming the syntax and the fix."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
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
    digest = hashlib.sha1(np.ascontiguousarray(image).data)  # hashed in place: no copy of the pixels
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


# pydicom logs, with a traceback, each failure that covidxray reports itself as one ImageReadError
# (one line from the command line), and its warnings; an application that configures the root
# logger (covidxray's command line does) would print them all. They stop at pydicom's own logger
# instead, where pydicom.config.debug() still shows them.
logging.getLogger("pydicom").propagate = False
