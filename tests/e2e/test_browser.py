"""End to end in headless Chromium (Debian's chromium, driven by Playwright): the web page of
``covidxray serve`` with a real X-ray, bad uploads, and the run's report.html opened offline.

Needs /usr/bin/chromium (``apt-get install chromium``; .ci/run installs it). Outside CI the test
is skipped when it is missing; on CI (``CI`` set) it fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from covidxray.cli import main
from helpers import make_dataset, shared_data_dir

pytestmark = pytest.mark.slow  # trains a small model and starts a server and a browser (~30 s)

CHROMIUM = os.environ.get("COVIDXRAY_CHROMIUM", "/usr/bin/chromium")


def _chromium() -> str:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        message = f"{CHROMIUM} is absent (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so the browser test must run")
        pytest.skip(message)
    pytest.importorskip("playwright", reason="pip install playwright")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    data = make_dataset(root / "data", per_class=10)
    run = root / "run"
    assert main(["--quiet", "train", "--data", str(data), "--out", str(run), "--image-size", "32",
                 "--epochs", "2", "--cache-dir", str(root / "cache")]) == 0
    return run


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """``covidxray serve`` in a subprocess on a free port of 127.0.0.1 (the default host)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "covidxray", "serve", "--run", str(trained_run),
                                    "--port", str(port), "--max-upload-mb", "4"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"covidxray serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"covidxray serve did not answer within 180 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


def _upload(page, url: str, path: Path) -> None:
    page.goto(url)
    page.set_input_files("#file", str(path))
    page.click("#submit")
    page.wait_for_load_state()


def test_upload_a_real_xray(server, browser, tmp_path):
    url, log_path = server
    xray = sorted((shared_data_dir() / "darkcovidnet" / "covid").glob("*.png"))[0]
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.goto(url)
    assert "never use it for diagnosis" in page.inner_text("#disclaimer")
    _upload(page, url, xray)
    page.wait_for_selector("#result")
    rows = page.locator("#probabilities tr[data-class]")
    probabilities = {rows.nth(i).get_attribute("data-class"): float(rows.nth(i).locator("td.p").inner_text().rstrip("%")) / 100
                     for i in range(rows.count())}
    assert set(probabilities) == {"covid", "normal", "pneumonia"}
    assert abs(sum(probabilities.values()) - 1) < 0.01
    label = page.inner_text("#label")
    assert probabilities[label] == max(probabilities.values())
    for image in ("#xray", "#heatmap"):  # both decoded and shown by the browser
        assert page.eval_on_selector(image, "img => img.complete && img.naturalWidth") > 100
        assert page.is_visible(image)
    assert "never use it for diagnosis" in page.inner_text("#disclaimer")
    screenshot = tmp_path / "serve.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    assert "127.0.0.1" in log_path.read_text()  # uvicorn says where it listens: this machine only


def _line_plot(path: Path) -> Path:
    """A line plot (acc.png of a run): no X-ray at all, as a user of issue 31 uploaded."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    epochs = np.arange(1, 31)
    axes.plot(epochs, 1 - 0.5 * np.exp(-epochs / 8), marker="o", label="training")
    axes.plot(epochs, 0.9 - 0.5 * np.exp(-epochs / 6), marker="o", label="validation")
    axes.set(xlabel="epoch", ylabel="accuracy", title="accuracy per epoch")
    axes.legend()
    figure.savefig(path)
    return path


def test_an_upload_unlike_the_training_data_is_headlined_above_the_class(server, browser, tmp_path):
    url, _ = server
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    _upload(page, url, _line_plot(tmp_path / "acc.png"))
    page.wait_for_selector("#result")
    flag, label = page.locator("#unlike"), page.locator("#label")
    assert flag.is_visible() and flag.inner_text().startswith("No answer: unlike the training data, or unsure.")
    flag_box, label_box = flag.bounding_box(), label.bounding_box()
    assert flag_box["y"] + flag_box["height"] <= label_box["y"]  # the flag is the headline, the class below it
    assert flag_box["width"] > label_box["width"]
    assert page.is_visible("#scale") and "1 high" in page.inner_text("#scale")  # the heatmap's colour scale
    assert page.eval_on_selector("#heatmap", "img => img.complete && img.naturalWidth") > 400  # the figure, legible
    screenshot = tmp_path / "unlike.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


@pytest.mark.parametrize("name, content", [
    ("truncated.png", None),  # the first bytes of a real X-ray
    ("notes.txt", b"this is not an image\n" * 10),
])
def test_bad_uploads_show_a_message(server, browser, tmp_path, name, content):
    url, _ = server
    path = tmp_path / name
    if content is None:
        content = sorted((shared_data_dir() / "darkcovidnet" / "normal").glob("*.png"))[0].read_bytes()[:300]
    path.write_bytes(content)
    page = browser.new_page()
    _upload(page, url, path)
    message = page.inner_text("#error")
    assert message.startswith(name) and "cannot read it as an X-ray" in message and "PNG, JPEG or DICOM" in message
    assert page.locator("#result").count() == 0
    assert "Traceback" not in page.content()
    assert page.is_visible("#file")  # the form is still there for the next try


def test_report_html_opens_offline_with_its_figures(trained_run, browser, tmp_path):
    report = trained_run / "report.html"
    assert report.is_file()
    context = browser.new_context(offline=True)
    fetched = []
    context.route("**/*", lambda route: (fetched.append(route.request.url), route.abort())
                  if not route.request.url.startswith(("file:", "data:")) else route.continue_())
    page = context.new_page()
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    figures = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => ({ok: i.complete && i.naturalWidth > 0, data: i.src.startsWith('data:image/png;base64,')}))")
    referenced = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (trained_run / "report.md").read_text())
    assert len(referenced) >= 3 and all((trained_run / name).is_file() for name in referenced)
    assert len(figures) == len(referenced) and all(f["ok"] and f["data"] for f in figures), figures
    assert page.locator("table").count() >= 2 and "never use it for diagnosis" in page.inner_text("body")
    assert fetched == []  # nothing but the file itself
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    context.close()


HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """A run trained on a manifest whose sources, patient ids, paths and an unreadable file's name
    are HTML and Markdown: a script in any of them must not run when report.html is opened."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from covidxray.models import MODELS, ModelSpec
    from helpers import synthetic_xray, tiny_body

    root = tmp_path_factory.mktemp("hostile")
    data = root / "data_<b>*x*_[y](javascript:alert(1))|`z`"
    rng = np.random.default_rng(0)
    rows = []
    for label in ("covid", "normal", "pneumonia"):
        for i in range(8):
            name = f"{label}_{i}_<script>alert('{label}')</script>.png".replace("/", "")
            (data / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(synthetic_xray(label, rng, size=32)).save(data / label / name)
            source = HOSTILE if label == "covid" else "a|b *c* [d](javascript:alert(2))"
            rows.append({"path": f"{label}/{name}", "label": label, "source": source,
                         "patient_id": f"<script>alert('{label}{i // 2}')</script>|*{i // 2}*"})
    (data / "covid" / f"{HOSTILE}.png").write_bytes(b"not an image")
    rows.append({"path": f"covid/{HOSTILE}.png", "label": "covid", "source": HOSTILE, "patient_id": "p"})
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)
    run = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MODELS, "tiny", ModelSpec(tiny_body, 32, True, description="a test model"))
        assert main(["--quiet", "train", "--data", str(data / "manifest.csv"), "--model", "tiny", "--out", str(run),
                     "--image-size", "32", "--epochs", "1", "--cache-dir", str(root / "cache")]) == 0
    return run


def test_report_html_shows_a_hostile_manifest_as_text(hostile_run):
    import html

    page = (hostile_run / "report.html").read_text()
    assert "<img src=x" not in page and not re.search(r"<[^>]*onerror", page) and "<script" not in page
    cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", page)]
    assert HOSTILE in cells and "a|b *c* [d](javascript:alert(2))" in cells  # one cell each, as written
    text = html.unescape(re.sub(r"<[^>]*>", "", page))
    assert f"{HOSTILE}.png" in text  # the unreadable file, named as it is
    assert f"comes from {HOSTILE}" in text  # the confounding warning names the source as it is


def test_a_hostile_report_html_runs_no_script(hostile_run, browser):
    context = browser.new_context(offline=True)
    fetched, dialogs = [], []
    context.route("**/*", lambda route: (fetched.append(route.request.url), route.abort())
                  if not route.request.url.startswith(("file:", "data:")) else route.continue_())
    page = context.new_page()
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto((hostile_run / "report.html").as_uri())
    page.wait_for_load_state("load")
    page.wait_for_timeout(500)  # an onerror handler would have run by now
    assert page.title() == "covidxray run: tiny on three-class" and dialogs == []
    assert page.evaluate("document.scripts.length") == 0
    assert page.eval_on_selector_all("img", "imgs => imgs.every(i => i.src.startsWith('data:image/png;base64,'))")
    assert HOSTILE in page.inner_text("table:has(th:text('source'))")
    assert fetched == []
    context.close()
