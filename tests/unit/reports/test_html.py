"""report.html: report.md as one self-contained page (figures inline, nothing fetched)."""

from __future__ import annotations

import base64
import re

from covidxray.reports.html import render_body, render_html, write_html
from covidxray.reports.markdown import write_report
from helpers import gray, write_png

REPORT = """# covidxray run: `compactnet` on binary

> **For research and teaching only.** Not for diagnosis.

| split | accuracy |
|---|---:|
| test | 91.0% |

![accuracy and loss](acc.png)

![missing figure](gone.png) ![remote](https://example.org/x.png) ![outside](../secret.png)
"""


def test_write_report_writes_md_and_self_contained_html(tmp_path):
    figure = write_png(tmp_path / "run" / "acc.png", gray(1, (6, 6)))
    write_png(tmp_path / "secret.png", gray(2))
    write_report(tmp_path / "run" / "report.md", REPORT)
    assert (tmp_path / "run" / "report.md").read_text() == REPORT
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>covidxray run: compactnet on binary</title>" in page
    assert "<table>" in page and "<td" in page and "91.0%" in page  # the table is rendered
    assert "<blockquote>" in page and "For research and teaching only." in page
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(sources) == 4
    assert sources[0] == "data:image/png;base64," + base64.b64encode(figure.read_bytes()).decode()
    assert sources[1:] == ["", "", ""]  # missing, remote and outside images are left out, never fetched
    assert "example.org" not in page and "http://" not in page and "https://" not in page
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporary files


def test_title_without_heading():
    assert "<title>covidxray report</title>" in render_html("no heading here", ".")


def test_write_html_beside_any_markdown_file(tmp_path):
    figure = write_png(tmp_path / "cv_mat.png", gray(3, (4, 4)))
    target = write_html(tmp_path / "cv.md", "# cv\n\n![m](cv_mat.png) ![inline](data:image/png;base64,AAAA)")
    assert target == tmp_path / "cv.html"
    page = target.read_text()
    assert "<title>cv</title>" in page
    assert re.findall(r'<img[^>]*src="([^"]*)"', page) == [
        "data:image/png;base64," + base64.b64encode(figure.read_bytes()).decode(), "data:image/png;base64,AAAA"]


def test_render_body_is_the_page_without_its_head(tmp_path):
    body = render_body("| a |\n|---|\n| 1 |", tmp_path)
    assert body.startswith("<table>") and "<td>1</td>" in body and "<html" not in body


def test_raw_html_in_the_markdown_is_shown_as_text(tmp_path):
    """Defence in depth: should a user string reach the Markdown unescaped, it still cannot run."""
    figure = write_png(tmp_path / "acc.png", gray(4, (4, 4)))
    text = ("# run on <img src=x onerror=\"document.title='pwned'\">\n\n"
            "| source | n |\n|---|---|\n| <img src=x onerror=\"alert(1)\"> | 1 |\n\n"
            "<script>alert(2)</script>\n\ninline <svg onload=alert(3)> and <b>bold</b>\n\n![accuracy](acc.png)\n")
    page = render_html(text, tmp_path)
    assert "<script" not in page and "<svg" not in page and "<b>" not in page
    assert re.findall(r"<img[^>]*>", page) == [
        f'<img alt="accuracy" src="data:image/png;base64,{base64.b64encode(figure.read_bytes()).decode()}">']
    assert "&lt;img src=x onerror=\"alert(1)\"&gt;" in page and "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "<title>run on &lt;img src=x onerror=\"document.title='pwned'\"&gt;</title>" in page
