"""covidxray.web.app, without a browser: the page, uploads of every kind, limits and errors.

(tests/e2e/test_browser.py drives the same page in headless Chromium; tests/e2e/test_cli_serve.py
the ``covidxray serve`` command.)
"""

from __future__ import annotations

import base64
import io
import re
import socket

import numpy as np
import pytest
from PIL import Image

from covidxray.errors import CovidXrayError
from covidxray.inference.analysis import XrayAnalyzer
from covidxray.web.app import _check_port, _is_loopback, create_app, serve
from helpers import build_run, gray, png_bytes, write_dicom

pytest.importorskip("fastapi", reason="covidxray[serve] is not installed")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def client(run_dir):
    from fastapi.testclient import TestClient

    return TestClient(create_app(XrayAnalyzer(run_dir), max_upload_mb=0.5))



def _upload(client, name: str, data: bytes, url: str = "/"):
    return client.post(url, files={"file": (name, data, "application/octet-stream")})


def _probabilities(page: str) -> dict[str, float]:
    rows = re.findall(r'<tr data-class="(\w+)"[^>]*><td>\w+</td><td class="p">([\d.]+)%</td>', page)
    return {name: float(p) / 100 for name, p in rows}


def test_page_has_the_form_and_the_warning(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and 'enctype="multipart/form-data"' in page.text
    assert "never use it for diagnosis" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere


@pytest.mark.parametrize("name, fmt", [("xray.png", "PNG"), ("xray.jpg", "JPEG")])
def test_png_and_jpeg_give_probabilities_and_a_heatmap(client, name, fmt):
    response = _upload(client, name, png_bytes(gray(1, (64, 80)), fmt))
    assert response.status_code == 200
    probabilities = _probabilities(response.text)
    assert set(probabilities) == {"covid", "normal", "pneumonia"}
    assert abs(sum(probabilities.values()) - 1) < 0.01
    label = re.search(r'<span id="label">(\w+)</span>', response.text).group(1)
    assert probabilities[label] == max(probabilities.values())
    heatmap = re.search(r'<img id="heatmap"[^>]*src="data:image/png;base64,([^"]+)"', response.text).group(1)
    figure = np.asarray(Image.open(io.BytesIO(base64.b64decode(heatmap))))
    assert figure.ndim == 3 and figure.shape[2] == 3 and figure.shape[0] > 64
    scale = re.search(r'<div id="scale"[^>]*>(.*?)</div>', response.text).group(1)  # the heatmap's colour scale
    assert "0 low" in scale and "1 high" in scale and "linear-gradient(to right, rgb(0,0,128) 0%" in scale
    assert 'id="unlike"' not in response.text  # this run cannot tell (no familiarity.npz): no flag
    assert "never use it for diagnosis" in response.text and 'id="error"' not in response.text


def test_api_predicts_dicom(client, tmp_path):
    pixels = np.arange(48 * 48, dtype=np.uint16).reshape(48, 48)
    dicom = write_dicom(tmp_path / "scan.dcm", pixels, "MONOCHROME1").read_bytes()
    for name in ("scan.dcm", "IM0001"):  # by suffix, and by the DICM marker
        response = _upload(client, name, dicom, "/api/predict")
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["file"] == name and result["label"] in result["probabilities"]
        assert abs(sum(result["probabilities"].values()) - 1) < 1e-4
        assert base64.b64decode(result["heatmap_png"])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name, data, expected", [
    ("notes.txt", b"these are not pixels\n" * 20, "cannot read it as an X-ray"),
    ("broken.png", png_bytes(gray(2, (64, 64)))[:200], "cannot read it as an X-ray"),
    ("broken.dcm", b"\0" * 128 + b"DICM" + b"garbage" * 30, "cannot read it as an X-ray"),
    ("empty.png", b"", "the file is empty"),
])
def test_bad_files_get_a_message_not_a_traceback(client, name, data, expected):
    response = _upload(client, name, data)
    assert response.status_code == 400
    error = re.search(r'<p class="error" id="error" role="alert">([^<]+)</p>', response.text).group(1)
    assert error.startswith(name) and expected in error
    assert "Traceback" not in response.text and 'id="result"' not in response.text
    assert "never use it for diagnosis" in response.text  # the page, with its form, is still there


def test_too_large_upload_is_refused(client):
    response = _upload(client, "big.png", b"\0" * (2 * 2**20))
    assert response.status_code == 413 and "too large" in response.text and "0.5 MB" in response.text
    api = _upload(client, "big.png", b"\0" * (2 * 2**20), "/api/predict")
    assert api.status_code == 413 and "too large" in api.json()["error"]


def test_no_file_chosen(client):
    response = client.post("/", data={"other": "x"}, files={"file": ("", b"", "application/octet-stream")})
    assert response.status_code == 400 and "no file chosen" in response.text


def test_upload_names_cannot_reach_the_disk(client, run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in run_dir.iterdir())
    response = _upload(client, "../../../../tmp/evil.png", png_bytes(gray(3, (40, 40))))
    assert response.status_code == 200 and "evil.png" in response.text and "../" not in response.text
    assert sorted(p.name for p in run_dir.iterdir()) == before and list(tmp_path.iterdir()) == []


def test_page_applies_and_states_the_runs_calibration(run_dir, tmp_path):
    import json
    import shutil

    from fastapi.testclient import TestClient

    calibrated = shutil.copytree(run_dir, tmp_path / "calibrated")
    (calibrated / "calibration.json").write_text(json.dumps(
        {"temperature": 2.0, "covid_threshold": 0.0, "target_sensitivity": 0.95}))  # COVID always wins
    client = TestClient(create_app(XrayAnalyzer(calibrated)))
    page = _upload(client, "x.png", png_bytes(gray(4, (40, 40)))).text
    assert re.search(r'<span id="label">(\w+)</span>', page).group(1) == "covid"
    assert "temperature-scaled (T = 2.00)" in page and "reaches 0.000" in page and "95% sensitivity" in page
    plain = XrayAnalyzer(run_dir).analyse("x.png", png_bytes(gray(4, (40, 40))))
    scaled = XrayAnalyzer(calibrated).analyse("x.png", png_bytes(gray(4, (40, 40))))
    assert max(scaled.probabilities.values()) < max(plain.probabilities.values())  # T > 1 softens


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.text == "ok"


def test_only_loopback_hosts_count_as_this_machine():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.5") and not _is_loopback("example.org")


def test_the_port_is_checked_before_the_model_loads():
    with pytest.raises(CovidXrayError, match="--port 0: choose a port between 1 and 65535"):
        _check_port("127.0.0.1", 0)
    with pytest.raises(CovidXrayError, match="--port 70000"):
        _check_port("127.0.0.1", 70000)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CovidXrayError, match=f"cannot listen on 127.0.0.1:{port}"):
            _check_port("127.0.0.1", port)
    _check_port("127.0.0.1", port)  # free again: no error


def test_serve_refuses_a_folder_without_a_model_before_listening(tmp_path):
    with pytest.raises(CovidXrayError, match="model.keras: missing"):
        serve(tmp_path, port=1)  # the model is checked first: port 1 would need root


def test_serve_without_the_extra_names_the_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(CovidXrayError, match="needs uvicorn: pip install 'covidxray\\[serve\\]'"):
        serve(tmp_path)


# --- limits (issue 12) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def analyzer(run_dir):
    return XrayAnalyzer(run_dir)


def test_head_answers_like_get_without_a_body(client):
    for url in ("/", "/healthz"):
        head, get = client.head(url), client.get(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert int(head.headers["content-length"]) == len(get.content)


@pytest.mark.parametrize("value", [-1, 0, float("nan"), float("inf")])
def test_the_upload_limit_must_be_a_positive_size(analyzer, tmp_path, value):
    with pytest.raises(CovidXrayError, match=f"--max-upload-mb {value}: give the largest upload in MB"):
        serve(tmp_path, max_upload_mb=value)  # before the model is looked for: tmp_path has none
    with pytest.raises(CovidXrayError, match="--max-upload-mb"):
        create_app(analyzer, max_upload_mb=value)


def test_an_upload_over_the_pixel_limit_gets_a_message_without_being_decoded(client):
    from helpers import png_declaring

    response = _upload(client, "huge.png", png_declaring(9400, 9400), "/api/predict")  # issue 12: 2 GB a request
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("huge.png: cannot read it as an X-ray: too large: 9,400 x 9,400 pixels") and "50 Mpx" in error


def test_at_most_two_uploads_are_decoded_at_once(analyzer, monkeypatch):
    import threading
    import time

    from fastapi.testclient import TestClient

    active, most, lock = 0, 0, threading.Lock()
    real = analyzer.upload

    def slow_decode(filename, data):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        try:
            time.sleep(0.3)
            return real(filename, data)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(analyzer, "upload", slow_decode)
    app = create_app(analyzer)
    client = TestClient(app)
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(_upload(client, "x.png", png_bytes(gray(5, (40, 40))),
                                                                       "/api/predict").status_code))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * 6
    assert most == 2  # six uploads at once, two decoded at a time
    assert sum(app.state.batcher.batch_sizes) == 6  # and analysed in batches


def test_an_upload_that_stops_sending_its_body_gets_408(analyzer):
    # uvicorn waits for ever for a body a client declared but does not send; the page answers 408
    import threading
    import time

    import uvicorn

    app = create_app(analyzer, body_timeout_s=1)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
                client.sendall(b"POST /api/predict HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n"
                               b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
                               b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n\x89PNG')
                started, reply = time.monotonic(), b""
                while chunk := client.recv(65536):  # the server closes the connection after answering
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 408 ") and b"connection: close" in reply.lower()
            assert b"upload timed out: no data for 1 s" in reply
            assert time.monotonic() - started < 10
        finally:
            server.should_exit = True
            thread.join(timeout=10)
