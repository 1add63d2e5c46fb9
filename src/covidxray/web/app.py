"""``covidxray serve``: a small local web page to try a trained model on one X-ray at a time.

Upload a PNG, JPEG or DICOM file; the page shows the class probabilities, a Grad-CAM heatmap
over the image with its colour scale and the not-for-diagnosis warning; an X-ray unlike the run's
training data is headlined as such, above the class. The model is loaded once, at start-up.
Uploads are decoded from memory and answered with inline (``data:``) images: covidxray writes
no file (the upload parser may spool a large upload to the system's temporary folder). Files
over the size limit, non-images and corrupt files get a one-line message on the page, never a
stack trace. It listens on 127.0.0.1 unless told otherwise.

Memory and time are bounded per request: images over ``covidxray.data.images.MAX_PIXELS`` are
refused from their header, at most :data:`MAX_CONCURRENT_DECODES` uploads are decoded at once
(the others wait their turn; a decoded upload is reduced to what the analysis needs), and an
upload that stops sending its body for :data:`BODY_TIMEOUT_S` seconds is answered 408 and its
connection closed. Uploads that arrive together are analysed as one batch
(:mod:`covidxray.web.batching`: at most 16, the first waiting at most 20 ms for others).

FastAPI, uvicorn and python-multipart are an optional extra: ``pip install 'covidxray[serve]'``.
"""

# No "from __future__ import annotations": FastAPI reads the route annotations at definition.
import asyncio
import base64
import html
import ipaddress
import logging
import math
import socket
import threading
from pathlib import Path

from covidxray.data.images import DECODING
from covidxray.errors import CovidXrayError, ImageReadError
from covidxray.inference.analysis import Analysis, XrayAnalyzer
from covidxray.inference.familiarity import UNLIKE, UNLIKE_SHORT
from covidxray.inference.lungs import OK
from covidxray.web.batching import MAX_BATCH, MAX_WAIT_S, Batcher

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 32.0  # an uncompressed 16-bit DICOM of 3000 x 3000 pixels is 18 MB
_FORM_OVERHEAD = 64 * 1024  # multipart headers and boundaries around the file
ACCEPT = ".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom"
#: Uploads decoded and analysed at once; the others wait. The worst image under MAX_PIXELS
#: costs about 400 MB to decode (docs/reliability.md), so two stay under 1 GB.
MAX_CONCURRENT_DECODES = 2
#: Seconds an upload may go without sending any of the body it declared before it is answered 408.
BODY_TIMEOUT_S = 30.0


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ------------------------------------------------------------------------------------------ page

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 62rem; margin: 1.5rem auto;
       padding: 0 1rem; color: #1d232a; }
h1 { font-size: 1.5rem; margin-bottom: .3rem; }
.warning { padding: .7rem 1rem; background: #fff4e5; border-left: 5px solid #e08a00; margin: 1rem 0; }
.warning p { margin: 0; }
form { margin: 1rem 0; padding: 1rem; border: 1px dashed #8899aa; border-radius: 6px; }
button { font: inherit; padding: .3rem 1.2rem; }
.error { padding: .7rem 1rem; background: #fdecea; border-left: 5px solid #c62828; }
.images { display: flex; gap: 1rem; flex-wrap: wrap; }
figure { margin: 0; max-width: 384px; }
figure img { width: 384px; max-width: 100%; border-radius: 4px; background: #000; }
figure.heat { max-width: 680px; }
figure.heat img { width: auto; background: none; }
.flag { padding: .8rem 1rem; background: #fdecea; border: 2px solid #c62828; border-radius: 4px; margin: 1rem 0; }
.flag strong { font-size: 1.15rem; color: #b71c1c; }
#scale { display: flex; align-items: center; gap: .5rem; margin: .3rem 0; font-size: .85rem; }
#scale .ramp { width: 14rem; height: .8rem; border-radius: 3px; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
td, th { padding: .25rem .6rem; text-align: left; }
td.p { font-variant-numeric: tabular-nums; text-align: right; }
.bar { background: #d0d7de; width: 14rem; height: .8rem; border-radius: 3px; }
.bar span { display: block; height: 100%; background: #3367d6; border-radius: 3px; }
tr.best td { font-weight: 600; }
small { color: #57606a; }
"""


def _disclaimer_html() -> str:
    import markdown

    from covidxray.reports.markdown import DISCLAIMER

    return markdown.markdown(DISCLAIMER.lstrip("> ").strip())


def _lungs_caption(analysis) -> str:
    if analysis.lungs != OK:
        return f"No lung outline: the lungs were not found reliably ({analysis.lungs})."
    if analysis.cropped:
        return "The model saw the box around the lungs (dashed magenta); the white line is their outline."
    return "The white line is the outline of the lungs."


def _scale_html() -> str:
    """The heatmap's colour scale (heatmaps.COLORMAP) as a CSS gradient, with what its ends mean."""
    from matplotlib import colormaps

    from covidxray.inference.heatmaps import COLORMAP

    stops = ", ".join(f"rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f}) {100 * x:.0f}%"
                      for x in (i / 10 for i in range(11)) for r, g, b, _ in [colormaps[COLORMAP](x)])
    return (f'<div id="scale" role="img" aria-label="heatmap colour scale from blue, low, to red, high">'
            f'<span>Grad-CAM: 0 low</span><span class="ramp" style="background: linear-gradient(to right, {stops})">'
            '</span><span>1 high</span></div>')


def render_page(analyzer: XrayAnalyzer, max_bytes: int, *, analysis: Analysis | None = None,
                error: str | None = None, filename: str = "") -> str:
    """The whole page: form, warning, and the result of the last upload or its error."""
    config, calibration = analyzer.config, analyzer.calibration
    parts = []
    decision = ""
    if calibration.temperature != 1.0:
        decision += f" Probabilities are temperature-scaled (T = {calibration.temperature:.2f}), as in covidxray predict."
    if calibration.covid_threshold is not None:
        decision += (f" COVID-19 is predicted when its probability reaches {calibration.covid_threshold:.3f}"
                     + (f" (chosen for {100 * calibration.target_sensitivity:.0f}% sensitivity on validation)"
                        if calibration.target_sensitivity else "") + ".")
    if error:
        parts.append(f'<p class="error" id="error" role="alert">{html.escape(error)}</p>')
    if analysis:
        rows = "".join(
            f'<tr data-class="{html.escape(c)}" class="{"best" if c == analysis.label else "other"}">'
            f'<td>{html.escape(c)}</td><td class="p">{100 * p:.1f}%</td>'
            f'<td><div class="bar"><span style="width:{100 * p:.1f}%"></span></div></td></tr>'
            for c, p in analysis.probabilities.items()
        )
        flag = ""
        if analysis.unlike_training:  # the headline, above any class: the class means little for this image
            flag = (f'<div class="flag" id="unlike" role="alert"><strong>{html.escape(UNLIKE_SHORT.capitalize())}.'
                    f'</strong> {html.escape(UNLIKE[0].upper() + UNLIKE[1:])}.</div>')
        parts.append(
            f'<section id="result">{flag}<h2>{html.escape(filename)}: <span id="label">{html.escape(analysis.label)}</span></h2>'
            f'<table id="probabilities"><tr><th>class</th><th>probability</th><th></th></tr>{rows}</table>'
            '<div class="images">'
            f'<figure><img id="xray" alt="the uploaded X-ray" src="{_data_uri(analysis.image_png)}">'
            '<figcaption>the X-ray, as read</figcaption></figure>'
            f'<figure class="heat"><img id="heatmap" alt="Grad-CAM heatmap over the X-ray" '
            f'src="{_data_uri(analysis.heatmap_png)}">{_scale_html()}'
            f'<figcaption>Grad-CAM heatmap for "{html.escape(analysis.label)}": where the model looked, '
            f'not where the disease is. {html.escape(_lungs_caption(analysis))}</figcaption></figure></div></section>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>covidxray: try a model</title><style>{_STYLE}</style></head>
<body>
<h1>covidxray: try a chest X-ray model</h1>
<div class="warning" id="disclaimer">{_disclaimer_html()}</div>
<form method="post" action="/" enctype="multipart/form-data">
<label>X-ray (PNG, JPEG or DICOM, at most {max_bytes / 2**20:.0f} MB):
<input type="file" name="file" id="file" accept="{ACCEPT}" required></label>
<button type="submit" id="submit">Analyse</button>
</form>
{"".join(parts)}
<p><small>Model: <code>{html.escape(config.model)}</code>, task {html.escape(config.task)}, classes
{html.escape(", ".join(analyzer.classes))}, {config.image_size}&times;{config.image_size} px, run
<code>{html.escape(analyzer.run_dir.name)}</code>.{html.escape(decision)} Nothing you upload is stored.</small></p>
</body></html>
"""


# ------------------------------------------------------------------------------------------- app


class UploadError(Exception):
    """An upload the page answers with a message (and an HTTP status)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status

    @property
    def headers(self) -> dict[str, str] | None:
        """``Connection: close`` where the body was not read whole (too large, stalled)."""
        return {"Connection": "close"} if self.status in (408, 413) else None


class _BodyStalled(Exception):
    """No part of the request body arrived within the timeout."""


def check_max_upload_mb(max_upload_mb: float) -> None:
    """Refuse an upload limit that is not a positive number of MB (``--max-upload-mb``)."""
    if not isinstance(max_upload_mb, int | float) or not math.isfinite(max_upload_mb) or max_upload_mb <= 0:
        shown = f"{max_upload_mb:g}" if isinstance(max_upload_mb, int | float) else repr(max_upload_mb)
        raise CovidXrayError(f"--max-upload-mb {shown}: give the largest upload in MB, a number greater "
                             f"than 0 (default {DEFAULT_MAX_UPLOAD_MB:g})")


async def _read_form(request, timeout_s: float):
    """``request.form()``, each wait for the next part of the body bounded by ``timeout_s``
    (uvicorn waits for a declared body for ever)."""
    from starlette.requests import Request

    receive = request.receive

    async def timed_receive():
        try:
            return await asyncio.wait_for(receive(), timeout_s)
        except asyncio.TimeoutError:
            raise _BodyStalled from None

    return await Request(request.scope, timed_receive).form(max_files=1, max_fields=4)


def create_app(analyzer: XrayAnalyzer, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, *,
               max_decodes: int = MAX_CONCURRENT_DECODES, body_timeout_s: float = BODY_TIMEOUT_S,
               max_batch: int = MAX_BATCH, max_wait_s: float = MAX_WAIT_S):
    """The FastAPI app: ``GET /`` (and ``HEAD /``) the page, ``POST /`` an upload from the page,
    ``POST /api/predict`` the same as JSON, ``GET /healthz`` for scripts.

    ``max_decodes``: uploads decoded at once (the others wait); ``body_timeout_s``: seconds without
    any of a declared body before the request is answered 408; ``max_batch``, ``max_wait_s``: the
    batching of analyses (:class:`~covidxray.web.batching.Batcher`)."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

    check_max_upload_mb(max_upload_mb)
    max_bytes = int(max_upload_mb * 2**20)
    decoding = threading.BoundedSemaphore(max_decodes)  # threads, not asyncio: one app may serve several event loops
    batcher = Batcher(analyzer.analyse_uploads, max_batch=max_batch, max_wait_s=max_wait_s)
    app = FastAPI(title="covidxray", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    def decode(filename: str, data: bytes):
        try:
            with decoding:  # bounds the memory of concurrent decodes: a full-size image lives only in here
                return analyzer.upload(filename, data)
        finally:
            DECODING.release()  # a large upload's pixels go back to the system, not kept by the server (issue 30)

    async def analyse(filename: str, data: bytes) -> Analysis:
        upload = await run_in_threadpool(decode, filename, data)
        return await asyncio.wrap_future(batcher.submit(upload))

    async def analyse_upload(request: Request) -> tuple[str, Analysis]:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise UploadError("upload refused: the request gives no Content-Length", 411)
        if int(length) > max_bytes + _FORM_OVERHEAD:
            raise UploadError(f"file too large ({int(length) / 2**20:.1f} MB); the limit is {max_upload_mb:g} MB", 413)
        try:
            form = await _read_form(request, body_timeout_s)
        except _BodyStalled:
            raise UploadError(f"upload timed out: no data for {body_timeout_s:g} s before the {int(length):,} bytes "
                              "the request declared had arrived", 408) from None
        except Exception as error:  # a malformed multipart body
            raise UploadError(f"the upload could not be read ({error})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str) or not upload.filename:
            raise UploadError("no file chosen: choose an X-ray image, then press Analyse")
        filename = Path(upload.filename.replace("\\", "/")).name or "upload"
        data = await upload.read(max_bytes + 1)
        await form.close()
        if len(data) > max_bytes:
            raise UploadError(f"{filename}: file too large; the limit is {max_upload_mb:g} MB", 413)
        if not data:
            raise UploadError(f"{filename}: the file is empty")
        try:
            return filename, await analyse(filename, data)
        except ImageReadError as error:
            raise UploadError(f"{filename}: cannot read it as an X-ray: {error.reason}. "
                              "Upload a PNG, JPEG or DICOM image.") from None
        except Exception:
            log.exception("analysing %s failed", filename)
            raise UploadError(f"{filename}: the analysis failed (an internal error, logged by the server)", 500) from None

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def page() -> HTMLResponse:  # HEAD: the same headers, no body (uvicorn drops it)
        return HTMLResponse(render_page(analyzer, max_bytes))

    @app.post("/", response_class=HTMLResponse)
    async def upload_page(request: Request) -> HTMLResponse:
        try:
            filename, analysis = await analyse_upload(request)
        except UploadError as error:
            return HTMLResponse(render_page(analyzer, max_bytes, error=str(error)), status_code=error.status,
                                headers=error.headers)
        return HTMLResponse(render_page(analyzer, max_bytes, analysis=analysis, filename=filename))

    @app.post("/api/predict")
    async def predict(request: Request) -> JSONResponse:
        try:
            filename, analysis = await analyse_upload(request)
        except UploadError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)
        return JSONResponse({"file": filename, "label": analysis.label, "probabilities": analysis.probabilities,
                             "lungs": analysis.lungs, "cropped": analysis.cropped,
                             "unlike_training": analysis.unlike_training,
                             "heatmap_png": base64.b64encode(analysis.heatmap_png).decode("ascii")})

    @app.api_route("/healthz", methods=["GET", "HEAD"], response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    return app


def serve(run: str | Path | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, quiet: bool = False) -> None:
    """Load the model of ``run`` (a run folder, ``preset:NAME``, or None: the default preset) and
    serve the page until interrupted."""
    import importlib.util

    check_max_upload_mb(max_upload_mb)  # the quick checks first: the model takes seconds to load
    missing = [name for name, modules in (("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                          ("python-multipart", ["python_multipart", "multipart"]))
               if not any(importlib.util.find_spec(m) for m in modules)]
    if missing:
        raise CovidXrayError(f"covidxray serve needs {', '.join(missing)}: pip install 'covidxray[serve]'")
    import uvicorn

    from covidxray.presets import resolve_run
    from covidxray.rundir import MODEL, RunDir

    run_dir = resolve_run(run)
    RunDir(run_dir).require(MODEL)  # quick checks first: the model takes seconds to load
    _check_port(host, port)
    analyzer = XrayAnalyzer(run_dir)
    app = create_app(analyzer, max_upload_mb)
    if not _is_loopback(host):
        log.warning("listening on %s: anyone who can reach this machine can use the page", host)
    log.info("serving %s on http://%s:%d (Ctrl+C stops it)", run_dir, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_port(host: str, port: int) -> None:
    """A clear error now, before the model loads, if the address cannot be used."""
    if not 0 < port < 65536:
        raise CovidXrayError(f"--port {port}: choose a port between 1 and 65535")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise CovidXrayError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port or --host") from None
