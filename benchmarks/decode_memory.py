"""Peak memory of decoding the worst X-ray files covidxray accepts, and of one upload to the web page.

    python benchmarks/decode_memory.py --out benchmarks/results/decode-memory-cpu-2core.json \
        --markdown benchmarks/results/decode-memory-cpu-2core.md

Writes small but hostile files to a temporary folder, each at ``MAX_PIXELS``
(``covidxray.data.images``, 50 Mpx): a 16-bit PNG, a 32-bit TIFF (deflate), an RGBA PNG (the
costliest 8-bit path), a 16-bit DICOM compressed with RLE, an uncompressed one with a rescale and a
window, and a colour JPEG DICOM (YBR); plus the two files of issue 12 that are over the limit (a
9,400 x 9,400 16-bit PNG of about 200 KB, an RLE DICOM declaring 13,500 x 13,500), which must be
refused. Each file is decoded in a fresh process by ``decode_resized`` (what the cache, the shards
and predict call); its cost ("extra peak") is the process's peak resident memory minus the peak
after importing covidxray and decoding a small file of the same kind. Then the issue's 16-bit PNG
and the file under serve's upload limit whose decode cost the most are posted to ``create_app``
(the default preset, FastAPI's TestClient) once, and three at a time, each in a fresh process,
measured the same way after small uploads as many at once. Issue 30 added two cases: many large files
decoded by four threads, as ``predict`` reads them (``--many``, default seven of the 16-bit PNG),
and six uploads at once (``--concurrent``), after which the server's resident memory must come
back within 100 MiB of its warm level ("after" in the result). Peak resident memory is the kernel's
high-water mark for the process (``VmHWM`` in ``/proc/self/status``: ``ru_maxrss`` without the
parent's peak, which Linux carries across ``exec``). Linux only. Exits 1 if one decode, the many
files, or one run of uploads costs 1 GiB or more, or the server keeps over 100 MiB after the uploads.

``--max-pixels`` changes the size of the files (not covidxray's limit): with a smaller value the
script runs in seconds (the tests do that).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import harness

LIMIT_MIB = 1024  # one request must stay under this (issue 12), and many files or uploads together (issue 30)
KEPT_MIB = 100  # what the server may keep after the uploads, over its warm level (issue 30)
OVER_LIMIT = {"png16-over": (9400, 9400), "dcm-rle16-over": (13500, 13500)}  # the files of issue 12


# ---------------------------------------------------------------------------------------------
# Files


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_png_rows(path: Path, width: int, height: int, bit_depth: int, color_type: int, row) -> Path:
    """A PNG written a row at a time (``row(y)``: the bytes of row ``y``), never whole in memory."""
    compressor = zlib.compressobj(6)
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n")
        file.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)))
        for y in range(height):
            data = compressor.compress(b"\0" + row(y))
            if data:
                file.write(_png_chunk(b"IDAT", data))
        file.write(_png_chunk(b"IDAT", compressor.flush()))
        file.write(_png_chunk(b"IEND", b""))
    return path


def write_png16(path: Path, width: int, height: int) -> Path:
    """16-bit grayscale, each row one value (a vertical ramp): compresses about 500:1."""
    return write_png_rows(path, width, height, 16, 0,
                          lambda y: (y * 65535 // max(1, height - 1)).to_bytes(2, "big") * width)


def write_png_rgba(path: Path, width: int, height: int) -> Path:
    """8-bit RGBA, half transparent: Pillow holds 4 bytes a pixel and composites it on black."""
    return write_png_rows(path, width, height, 8, 6, lambda y: bytes((y % 256, 128, 255 - y % 256, 128)) * width)


def write_tiff32(path: Path, width: int, height: int) -> Path:
    """32-bit integer TIFF (deflate): a ramp down the rows."""
    import numpy as np
    from PIL import Image

    column = (np.arange(height, dtype=np.int64) * 100_000 - 2**30).astype(np.int32)
    pixels = np.broadcast_to(column[:, None], (height, width))
    Image.fromarray(np.ascontiguousarray(pixels), "I").save(path, compression="tiff_adobe_deflate")
    return path


def _dicom(path: Path, rows: int, columns: int, syntax, pixel_data: bytes, **attributes) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    for name, value in attributes.items():
        setattr(dataset, name, value)
    dataset.PixelData = pixel_data
    if syntax.is_compressed:
        dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def rle_frame(rows: int, columns: int) -> bytes:
    """An RLE Lossless frame of 16-bit pixels, each row one value (a vertical ramp): two segments
    (high bytes, low bytes), each row in runs of 128 (2 bytes a run)."""
    full, rest = divmod(columns, 128)

    def segment(byte_of) -> bytes:
        parts = []
        for y in range(rows):
            value = byte_of(y * 65535 // max(1, rows - 1))
            run = bytes((0x81, value)) * full
            if rest:
                run += bytes((257 - rest, value)) if rest > 1 else bytes((0, value))
            parts.append(run)
        data = b"".join(parts)
        return data + b"\0" * (len(data) % 2)

    high, low = segment(lambda v: v >> 8), segment(lambda v: v & 0xFF)
    header = struct.pack("<16I", 2, 64, 64 + len(high), *([0] * 13))
    return header + high + low


def write_dicom_rle16(path: Path, rows: int, columns: int) -> Path:
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    return _dicom(path, rows, columns, RLELossless, encapsulate([rle_frame(rows, columns)]))


def write_dicom_native16(path: Path, rows: int, columns: int) -> Path:
    """Uncompressed 16-bit pixels with a rescale and a display window (both applied when read)."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian

    column = (np.arange(rows, dtype=np.int64) * 65535 // max(1, rows - 1)).astype("<u2")
    pixels = np.broadcast_to(column[:, None], (rows, columns))
    return _dicom(path, rows, columns, ExplicitVRLittleEndian, np.ascontiguousarray(pixels).tobytes(),
                  RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=30000, WindowWidth=40000)


def write_dicom_jpeg_rgb(path: Path, rows: int, columns: int) -> Path:
    """8-bit colour JPEG Baseline (YBR_FULL_422): Pillow decodes it at 4 bytes a pixel, and YBR is
    converted to RGB in float before its luminance is taken."""
    import numpy as np
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ramp = (np.arange(rows, dtype=np.int64) * 255 // max(1, rows - 1)).astype(np.uint8)[:, None]
    rgb = np.empty((rows, columns, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = ramp, 128, 255 - ramp
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    del rgb
    return _dicom(path, rows, columns, JPEGBaseline8Bit, encapsulate([buffer.getvalue()]), SamplesPerPixel=3,
                  PhotometricInterpretation="YBR_FULL_422", PlanarConfiguration=0, BitsAllocated=8, BitsStored=8,
                  HighBit=7)


#: name -> (writer, suffix, description)
KINDS = {
    "png16": (write_png16, ".png", "16-bit grayscale PNG"),
    "tiff32": (write_tiff32, ".tif", "32-bit integer TIFF, deflate"),
    "png-rgba8": (write_png_rgba, ".png", "8-bit RGBA PNG"),
    "dcm-rle16": (write_dicom_rle16, ".dcm", "16-bit DICOM, RLE Lossless"),
    "dcm-native16": (write_dicom_native16, ".dcm", "16-bit DICOM, uncompressed, rescale + window"),
    "dcm-jpeg-rgb": (write_dicom_jpeg_rgb, ".dcm", "8-bit colour DICOM, JPEG Baseline (YBR)"),
}


def write_files(folder: Path, max_pixels: int, names: list[str]) -> list[dict]:
    """The files to measure: each kind at ``max_pixels`` (a square), the issue's files over the
    limit, and a small twin of each (64 x 64) that warms its process up."""
    side = math.isqrt(max_pixels)
    files = []
    for name in names:
        kind = name.removesuffix("-over")
        writer, suffix, description = KINDS[kind]
        width, height = OVER_LIMIT[name] if name in OVER_LIMIT else (side, side)
        path = writer(folder / f"{name}{suffix}", width, height)
        warmup = writer(folder / f"{name}-small{suffix}", 64, 64)
        files.append({"name": name, "kind": description, "path": str(path), "warmup": str(warmup),
                      "width": width, "height": height, "megapixels": round(width * height / 1e6, 1),
                      "file_kb": round(path.stat().st_size / 1024)})
    return files


# ---------------------------------------------------------------------------------------------
# Workers (fresh processes)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB: ``VmHWM``, which starts afresh at
    ``exec`` (``ru_maxrss`` starts at the parent's peak, hundreds of MB after writing the files)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return harness.peak_rss_mib()  # pragma: no cover - not Linux


def rss_mib() -> float:
    """This process's resident memory now, in MiB (``VmRSS``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0  # pragma: no cover - not Linux


def many_worker(path: str, warmup: str, count: int) -> dict:
    """``count`` copies of one file decoded by four threads, as ``predict`` reads its files."""
    from concurrent.futures import ThreadPoolExecutor

    from covidxray.data.images import decode_resized

    decode_resized(warmup, 224)
    baseline = peak_rss_mib()
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda p: decode_resized(p, 224)[0].shape, [path] * count))
    assert shapes == [(224, 224)] * count
    return {"baseline_mib": baseline, "peak_mib": peak_rss_mib(), "seconds": time.perf_counter() - started,
            "error": None}


def decode_worker(path: str, warmup: str) -> dict:
    from covidxray.data.images import decode_resized
    from covidxray.errors import ImageReadError

    decode_resized(warmup, 224)  # imports and lazily loaded decoders
    baseline = peak_rss_mib()
    started = time.perf_counter()
    try:
        image, _ = decode_resized(path, 224)
        error = None
    except ImageReadError as refused:
        error = refused.reason
    return {"baseline_mib": baseline, "peak_mib": peak_rss_mib(), "seconds": time.perf_counter() - started,
            "error": error}


def web_worker(path: str, warmup: str, concurrent: int, run: str | None) -> dict:
    from fastapi.testclient import TestClient

    from covidxray.inference.analysis import XrayAnalyzer
    from covidxray.web.app import create_app

    client = TestClient(create_app(XrayAnalyzer(run)))

    def post(file: str) -> int:
        name = Path(file).name
        return client.post("/api/predict", files={"file": (name, Path(file).read_bytes(), "application/octet-stream")}).status_code

    def post_at_once(file: str) -> list[int]:
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(post(file))) for _ in range(concurrent)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return statuses

    # warm: small uploads as many at once as measured, so the model has met the batch sizes they make
    assert post_at_once(warmup) == [200] * concurrent, "the warm-up uploads failed"
    baseline, warm = peak_rss_mib(), rss_mib()
    started = time.perf_counter()
    statuses = post_at_once(path)
    return {"baseline_mib": baseline, "peak_mib": peak_rss_mib(), "seconds": time.perf_counter() - started,
            "statuses": sorted(statuses), "kept_mib": rss_mib() - warm}


def run_worker(arguments: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", *arguments], env=harness.worker_env(None),
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"failed": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Main


def table(rows: list[dict], max_pixels: int) -> str:
    def cost(row):
        return "failed" if "failed" in row else f"{row['peak_mib'] - row['baseline_mib']:,.0f}"

    return harness.markdown_table(
        ["file", "what", "pixels", "file size", "decoded by", "extra peak (MiB)", "peak RSS (MiB)", "seconds", "result"],
        [[row["name"], row["kind"], f"{row['width']:,} x {row['height']:,}", f"{row['file_kb']:,} KB", row["how"],
          cost(row), "" if "failed" in row else f"{row['peak_mib']:,.0f}",
          "" if "failed" in row else f"{row['seconds']:.1f}", row["result"]]
         for row in rows],
        align="llrrlrrrl",
        caption=f"Peak memory of one decode (a fresh process each) and of uploads to the web page, files at "
        f"{max_pixels / 1e6:g} Mpx and over; extra peak = peak resident memory minus the peak after a small file "
        f"of the same kind; {harness.host()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="pixels of the largest files (default: covidxray.data.images.MAX_PIXELS)")
    parser.add_argument("--files", nargs="+", default=[*KINDS, *OVER_LIMIT], choices=[*KINDS, *OVER_LIMIT])
    parser.add_argument("--web", nargs="*", default=["worst", "png16"], choices=["worst", *KINDS],
                        help="files to upload to the web page (default: the issue's 16-bit PNG, and the file "
                        "under the upload limit whose decode took the most memory)")
    parser.add_argument("--concurrent", type=int, default=6, help="uploads at once in the second web run")
    parser.add_argument("--many", type=int, default=7, help="copies of the 16-bit PNG decoded by four threads, "
                        "as predict reads them (0: not measured)")
    parser.add_argument("--run", default=None, help="the model for the web page (default: the default preset)")
    parser.add_argument("--out", help="JSON results")
    parser.add_argument("--markdown", help="the table as Markdown")
    args = parser.parse_args(argv)
    if args.worker:
        mode, path, warmup, *rest = args.worker
        result = (decode_worker(path, warmup) if mode == "decode"
                  else many_worker(path, warmup, int(rest[0])) if mode == "many"
                  else web_worker(path, warmup, int(rest[0]), rest[1] if len(rest) > 1 else None))
        print(json.dumps(result))
        return 0

    from covidxray.data import images

    max_pixels = args.max_pixels or getattr(images, "MAX_PIXELS", 50_000_000)
    names = args.files
    rows = []
    with tempfile.TemporaryDirectory(prefix="decode-memory-") as folder:
        files = write_files(Path(folder), max_pixels, names)
        for file in files:
            row = {**file, "how": "decode_resized", **run_worker(["decode", file["path"], file["warmup"]])}
            row["result"] = "failed" if "failed" in row else ("refused: " + row["error"] if row["error"] else "decoded")
            rows.append(row)
            print(table([row], max_pixels), flush=True)
        largest = next((f for f in files if f["name"] == "png16"), None)
        if args.many and largest is not None:
            row = {**largest, "name": f"png16 x{args.many}", "how": f"decode_resized, {args.many} files, 4 threads",
                   **run_worker(["many", largest["path"], largest["warmup"], str(args.many)])}
            row["result"] = "failed" if "failed" in row else "decoded"
            rows.append(row)
            print(table([row], max_pixels), flush=True)
        uploadable = [r for r in rows if r["result"] == "decoded" and r["file_kb"] <= 32 * 1024]  # serve's default limit
        worst = max(uploadable, key=lambda r: r["peak_mib"] - r["baseline_mib"], default={"name": None})["name"]
        for name in dict.fromkeys(worst if n == "worst" else n for n in args.web):
            file = next((f for f in files if f["name"] == name), None)
            if file is None:
                continue
            for concurrent in (1, args.concurrent):
                row = {**file, "how": f"web page, {concurrent} upload{'s' if concurrent > 1 else ''} at once",
                       **run_worker(["web", file["path"], file["warmup"], str(concurrent), *([args.run] if args.run else [])])}
                row["result"] = "failed" if "failed" in row else (
                    "HTTP " + ", ".join(map(str, row["statuses"])) + f"; kept {row['kept_mib']:,.0f} MiB after")
                rows.append(row)
                print(table([row], max_pixels), flush=True)
    for row in rows:
        row.pop("path"), row.pop("warmup")
    text = table(rows, max_pixels)
    print(text)
    harness.write_results(args.out, {"machine": harness.machine(), "max_pixels": max_pixels,
                                     "limit_mib": LIMIT_MIB, "rows": rows}, args.markdown, text)
    costs = [r["peak_mib"] - r["baseline_mib"] for r in rows if "failed" not in r]
    kept = [r["kept_mib"] for r in rows if "kept_mib" in r]
    return 0 if (all("failed" not in r for r in rows) and max(costs, default=0) < LIMIT_MIB
                 and max(kept, default=0) < KEPT_MIB) else 1


if __name__ == "__main__":
    sys.exit(main())
