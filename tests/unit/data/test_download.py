"""Tests for covidxray.data.download against a local HTTP server (offline, a few seconds)."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidxray.data.download import DATASETS, DatasetSpec, download_dataset
from covidxray.data.images import read_image
from covidxray.errors import DatasetError

ROOT = "COVID-19-master/X-Ray Image DataSet"
FILES = {
    "Covid-19": ["covid-19-pneumonia-7-PA.jpg", "nejmc2001573_f1a.jpeg"],
    "No_findings": ["00001234_002.png", "00001234_003.png", "00000042_000.png"],
    "Pneumonia": ["00000193_019.png", "00004344_035.png", "00012345_001.png"],
}
EXPECTED_ROWS = {
    ("covid/covid-19-pneumonia-7-PA.jpg", "covid", "", "ieee8023"),
    ("covid/nejmc2001573_f1a.jpeg", "covid", "", "ieee8023"),
    ("normal/00001234_002.png", "normal", "nih-1234", "nih-chestxray8"),
    ("normal/00001234_003.png", "normal", "nih-1234", "nih-chestxray8"),
    ("normal/00000042_000.png", "normal", "nih-42", "nih-chestxray8"),
    ("pneumonia/00000193_019.png", "pneumonia", "nih-193", "nih-chestxray8"),
    ("pneumonia/00004344_035.png", "pneumonia", "nih-4344", "nih-chestxray8"),
    ("pneumonia/00012345_001.png", "pneumonia", "nih-12345", "nih-chestxray8"),
}


def _image_bytes(filename: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    kind = "JPEG" if filename.endswith((".jpg", ".jpeg")) else "PNG"
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


def make_zip(files=FILES, root=ROOT, extra=(), compression=zipfile.ZIP_DEFLATED) -> bytes:
    """A zip laid out like the GitHub archive of muhammedtalo/COVID-19."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        zf.writestr("COVID-19-master/README.md", "# COVID-19\n")
        seed = 0
        for folder, names in files.items():
            zf.writestr(f"{root}/{folder}/", "")
            zf.writestr(f"{root}/{folder}/Thumbs.db", b"not an image")
            for name in names:
                seed += 1
                zf.writestr(f"{root}/{folder}/{name}", _image_bytes(name, seed))
        for name, data in extra:
            zf.writestr(name, data)
    return buffer.getvalue()


def tiny_spec(url: str, counts=None, sha256=None) -> DatasetSpec:
    counts = counts or {folder: len(names) for folder, names in FILES.items()}
    classes = {"Covid-19": "covid", "No_findings": "normal", "Pneumonia": "pneumonia"}
    return DatasetSpec(name="tiny", url=url, classes=classes, expected_counts=counts, sha256=sha256)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload``; honours Range unless told not to; can cut the body short."""

    def do_GET(self):
        server = self.server
        ranged = self.headers.get("Range")
        server.requests.append(ranged)
        if server.fail_with:
            self.send_error(server.fail_with)
            return
        data, start = server.payload, 0
        if ranged and server.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", ranged).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:  # one broken transfer, then normal service
            body, server.cut_after = body[: server.cut_after], None
        server.bytes_sent.append(len(body))  # before writing: the client may finish before this thread goes on
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.payload, httpd.honour_range, httpd.cut_after = make_zip(), True, None
    httpd.requests, httpd.bytes_sent, httpd.fail_with = [], [], None
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/master.zip"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def read_manifest(folder: Path) -> set[tuple[str, ...]]:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == ["path", "label", "patient_id", "source"]
        return {(r["path"], r["label"], r["patient_id"], r["source"]) for r in reader}


def test_full_download_lays_out_classes_and_manifest(server, tmp_path):
    folder = download_dataset("tiny", tmp_path, spec=tiny_spec(server.url))

    assert folder == tmp_path / "tiny"
    assert read_manifest(folder) == EXPECTED_ROWS
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["covid", "manifest.csv", "normal", "pneumonia"]
    for path, *_ in EXPECTED_ROWS:
        assert read_image(folder / path).shape == (8, 8)
    assert not list(folder.rglob("Thumbs.db")) and not list(folder.rglob("README.md"))
    assert (tmp_path / ".downloads" / "tiny.zip").read_bytes() == server.payload
    assert not (tmp_path / ".downloads" / "tiny.zip.part").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".tiny")] == []  # no staging left


def test_url_argument_overrides_spec_url(server, tmp_path):
    spec = tiny_spec("http://127.0.0.1:9/never-used.zip")
    folder = download_dataset("tiny", tmp_path, spec=spec, url=server.url)
    assert read_manifest(folder) == EXPECTED_ROWS
    assert server.requests == [None]


def test_complete_dataset_and_finished_zip_are_not_downloaded_again(server, tmp_path):
    spec = tiny_spec(server.url)
    download_dataset("tiny", tmp_path, spec=spec)
    assert download_dataset("tiny", tmp_path, spec=spec) == tmp_path / "tiny"
    assert len(server.requests) == 1

    # Without the dataset folder the kept zip is laid out again, still without a request.
    for path in sorted((tmp_path / "tiny").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "tiny").rmdir()
    folder = download_dataset("tiny", tmp_path, spec=spec)
    assert read_manifest(folder) == EXPECTED_ROWS
    assert len(server.requests) == 1


def test_interrupted_download_keeps_part_and_resumes_with_range(server, tmp_path):
    spec, cut = tiny_spec(server.url), 1000
    server.cut_after = cut
    with pytest.raises(DatasetError, match="resume") as info:
        download_dataset("tiny", tmp_path, spec=spec)
    assert server.url in str(info.value)
    part = tmp_path / ".downloads" / "tiny.zip.part"
    assert part.stat().st_size == cut
    assert not (tmp_path / ".downloads" / "tiny.zip").exists()
    assert not (tmp_path / "tiny").exists()

    folder = download_dataset("tiny", tmp_path, spec=spec)
    assert server.requests == [None, f"bytes={cut}-"]
    assert server.bytes_sent == [cut, len(server.payload) - cut]
    assert (tmp_path / ".downloads" / "tiny.zip").read_bytes() == server.payload
    assert not part.exists()
    assert read_manifest(folder) == EXPECTED_ROWS


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path):
    spec = tiny_spec(server.url)
    server.honour_range, server.cut_after = False, 1000
    with pytest.raises(DatasetError):
        download_dataset("tiny", tmp_path, spec=spec)

    folder = download_dataset("tiny", tmp_path, spec=spec)
    assert server.requests == [None, "bytes=1000-"]
    assert server.bytes_sent[-1] == len(server.payload)  # the server sent it all (200)
    assert (tmp_path / ".downloads" / "tiny.zip").read_bytes() == server.payload  # not appended
    assert read_manifest(folder) == EXPECTED_ROWS


def test_part_longer_than_file_starts_over(server, tmp_path):
    downloads = tmp_path / ".downloads"
    downloads.mkdir()
    (downloads / "tiny.zip.part").write_bytes(b"x" * (len(server.payload) + 10))
    download_dataset("tiny", tmp_path, spec=tiny_spec(server.url))
    assert (downloads / "tiny.zip").read_bytes() == server.payload


def test_network_error_names_url(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/x.zip"
    with pytest.raises(DatasetError, match=re.escape(url)):
        download_dataset("tiny", tmp_path, spec=tiny_spec(url), timeout=5)


def test_http_error_is_dataset_error(server, tmp_path):
    server.fail_with = 404
    with pytest.raises(DatasetError, match="HTTP 404"):
        download_dataset("tiny", tmp_path, spec=tiny_spec(server.url))
    assert not (tmp_path / ".downloads" / "tiny.zip").exists()


def test_corrupt_zip_is_rejected(server, tmp_path):
    payload = bytearray(make_zip(compression=zipfile.ZIP_STORED))
    offset = payload.index(b"IDAT") + 8  # inside a PNG's compressed pixels
    payload[offset : offset + 4] = bytes(255 - b for b in payload[offset : offset + 4])
    server.payload = bytes(payload)
    with pytest.raises(DatasetError, match=r"corrupt.*delete"):
        download_dataset("tiny", tmp_path, spec=tiny_spec(server.url))
    assert not (tmp_path / "tiny").exists()


def test_not_a_zip_is_rejected(server, tmp_path):
    server.payload = b"<html>rate limited</html>"
    with pytest.raises(DatasetError, match="not a readable zip"):
        download_dataset("tiny", tmp_path, spec=tiny_spec(server.url))


def test_sha256_is_checked_when_known(server, tmp_path):
    with pytest.raises(DatasetError, match="sha256"):
        download_dataset("tiny", tmp_path / "a", spec=tiny_spec(server.url, sha256="0" * 64))
    assert not (tmp_path / "a" / "tiny").exists()
    good = hashlib.sha256(server.payload).hexdigest()
    folder = download_dataset("tiny", tmp_path / "b", spec=tiny_spec(server.url, sha256=good))
    assert read_manifest(folder) == EXPECTED_ROWS


def test_missing_class_folder_is_rejected(server, tmp_path):
    server.payload = make_zip({k: v for k, v in FILES.items() if k != "Pneumonia"})
    with pytest.raises(DatasetError, match="missing Pneumonia"):
        download_dataset("tiny", tmp_path, spec=tiny_spec(server.url))
    assert not (tmp_path / "tiny").exists()


def test_too_few_images_is_rejected_unless_min_fraction_allows(server, tmp_path):
    counts = {"Covid-19": 2, "No_findings": 3, "Pneumonia": 6}
    with pytest.raises(DatasetError, match="Pneumonia: 3 of 6"):
        download_dataset("tiny", tmp_path, spec=tiny_spec(server.url, counts))
    assert not (tmp_path / "tiny").exists()
    folder = download_dataset("tiny", tmp_path, spec=tiny_spec(server.url, counts),
                              min_fraction=0.5)
    assert read_manifest(folder) == EXPECTED_ROWS


def test_folder_holding_all_classes_is_found_anywhere(server, tmp_path):
    decoy = [("COVID-19-master/old/Covid-19/decoy.png", _image_bytes("decoy.png", 99))]
    server.payload = make_zip(root="other-top/nested/Data Set", extra=decoy)
    folder = download_dataset("tiny", tmp_path, spec=tiny_spec(server.url))
    assert read_manifest(folder) == EXPECTED_ROWS


def test_zip_members_cannot_escape_dest(server, tmp_path):
    png = _image_bytes("evil.png", 7)
    evil = [
        ("../evil.png", png),
        (f"{ROOT}/Covid-19/../../../evil2.png", png),
        (f"../../{ROOT}/Covid-19/evil3.png", png),
        ("/tmp/evil4.png", png),
        (f"{ROOT}/Covid-19/..\\..\\evil5.png", png),
    ]
    server.payload = make_zip(extra=evil)
    dest = tmp_path / "data"
    folder = download_dataset("tiny", dest, spec=tiny_spec(server.url))
    assert read_manifest(folder) == EXPECTED_ROWS
    assert [p for p in tmp_path.rglob("*evil*")] == []
    assert not Path("/tmp/evil4.png").exists()


def test_existing_incomplete_folder_is_not_overwritten(server, tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a complete download"):
        download_dataset("tiny", tmp_path, spec=tiny_spec(server.url))
    assert (tmp_path / "tiny" / "mine.txt").read_text() == "keep me"
    assert server.requests == []


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'nope'.*darkcovidnet"):
        download_dataset("nope", tmp_path)


def test_darkcovidnet_spec():
    spec = DATASETS["darkcovidnet"]
    assert spec.url == "https://github.com/muhammedtalo/COVID-19/archive/refs/heads/master.zip"
    assert spec.classes == {"Covid-19": "covid", "No_findings": "normal", "Pneumonia": "pneumonia"}
    assert spec.expected_counts == {"Covid-19": 125, "No_findings": 500, "Pneumonia": 500}
    assert spec.sha256 is None
    assert "10.1016/j.compbiomed.2020.103792" in spec.citation


def test_spec_rejects_mismatched_tables():
    with pytest.raises(ValueError):
        DatasetSpec(name="x", url="u", classes={"A": "covid"}, expected_counts={"B": 1})
