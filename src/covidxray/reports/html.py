"""``report.html``: ``report.md`` as one self-contained web page that opens offline.

The Markdown is rendered with the ``markdown`` package (tables included); every image it
references is read from beside the report and inlined as a base64 ``data:`` URI, and the style
sheet is inline, so the page loads nothing from anywhere and can be mailed as one file.

Raw HTML in the Markdown is shown as text, never passed through: the reports escape every
user-provided string (:func:`covidxray.reports.markdown.escape_md`), and should one slip through,
a ``<script>`` or ``<img onerror=...>`` in it still cannot run when the page is opened. Figures are
Markdown images (``![alt](file.png)``), which this does not touch.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from covidxray.files import atomic_write_text

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1d232a; }
h1, h2, h3 { line-height: 1.2; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #c9d1d9; padding: .3rem .6rem; }
th { background: #f1f4f7; }
td { font-variant-numeric: tabular-nums; }
blockquote { margin: 1rem 0; padding: .6rem 1rem; background: #fff4e5; border-left: 4px solid #e08a00; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0; }
code { background: #f1f4f7; padding: 0 .2rem; border-radius: 3px; }
"""

_IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]*)(")', re.IGNORECASE)
_TITLE = re.compile(r"<h1[^>]*>(.*?)</h1>", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def render_html(markdown_text: str, base_dir: str | Path) -> str:
    """The page for ``markdown_text``; relative image paths are read from ``base_dir``.

    An image that is missing, or referenced by URL or by a path outside ``base_dir``, is left
    out (its alternative text stays), so the page never fetches anything.
    """
    body = render_body(markdown_text, base_dir)
    match = _TITLE.search(body)  # the first heading's text, already escaped HTML, without its tags
    title = " ".join(_TAG.sub("", match.group(1)).split()) if match else ""
    title = title or "covidxray report"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def render_body(markdown_text: str, base_dir: str | Path) -> str:
    """The page's body alone (tables, text, inlined figures): for a notebook's ``display(HTML(...))``."""
    import markdown

    converter = markdown.Markdown(extensions=["tables", "sane_lists"], output_format="html")
    converter.preprocessors.deregister("html_block")  # raw HTML blocks and inline tags: shown as text
    converter.inlinePatterns.deregister("html")
    body = converter.convert(markdown_text)
    return _IMG_SRC.sub(lambda m: m.group(1) + _data_uri(m.group(2), Path(base_dir)) + m.group(3), body)


def write_html(markdown_path: str | Path, markdown_text: str) -> Path:
    """Write ``report.html`` (same stem) beside ``markdown_path``, atomically; returns its path."""
    markdown_path = Path(markdown_path)
    target = markdown_path.with_suffix(".html")
    atomic_write_text(target, render_html(markdown_text, markdown_path.parent))
    return target


def _data_uri(src: str, base_dir: Path) -> str:
    """``data:`` URI of the image ``src`` (a path relative to ``base_dir``), or "" if unusable."""
    src = html.unescape(src)
    if src.startswith("data:"):
        return html.escape(src, quote=True)
    if re.match(r"^[a-z][a-z0-9+.-]*:", src, re.IGNORECASE) or src.startswith(("/", "\\")):
        return ""  # a URL or an absolute path: never fetched, never inlined
    base = base_dir.resolve()
    path = (base / src).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return ""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
