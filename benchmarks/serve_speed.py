"""Uploads per second and latency of ``covidxray serve``'s page, at 1, 4 and 16 concurrent clients.

    python benchmarks/serve_speed.py --images ../shared/data/darkcovidnet/covid --requests 400
    python benchmarks/serve_speed.py --run runs/darkcovidnet-three-class --images DIR --clients 1 4 16 \
        --out serve.json

The app runs in uvicorn on 127.0.0.1 (a free port) in this process, after the model is loaded
and one warm-up upload; each client is a thread with its own HTTP connection posting the images
in turn to ``/api/predict`` (decode, lungs, predict, Grad-CAM, PNGs). For each number of clients:
uploads per second, latency percentiles (50, 90, 99), the sizes of the batches the app analysed,
and the process's resident memory before and after (growth over all the requests). Prints one
JSON object (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import covidxray  # noqa: F401  (chooses the Keras backend before anything imports Keras)
from covidxray.inference.analysis import XrayAnalyzer
from covidxray.inference.predict import expand_paths
from covidxray.web.app import create_app


def resident_mb() -> float:
    """This process's resident memory in MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


def load(url: str, payloads: list[tuple[str, bytes]], clients: int, requests: int) -> dict:
    """``requests`` uploads from ``clients`` threads; returns throughput and latency."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(index: int) -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                name, data = payloads[k % len(payloads)]
                started = time.perf_counter()
                response = http.post(url, files={"file": (name, data, "image/png")})
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.text[:300]}")
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - started
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"clients": clients, "requests": len(latencies), "seconds": round(seconds, 2),
            "uploads_per_second": round(len(latencies) / seconds, 2), "latency_p50_s": round(float(p50), 3),
            "latency_p90_s": round(float(p90), 3), "latency_p99_s": round(float(p99), 3)}


def main(argv=None) -> int:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a run directory or preset:NAME (default: the default preset)")
    parser.add_argument("--images", required=True, help="a folder of images, posted in turn")
    parser.add_argument("--count", type=int, default=50, help="distinct images to read from --images")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=200, help="uploads per number of clients")
    parser.add_argument("--max-batch", type=int, default=None, help="the app's batch limit (default: its own)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    paths = expand_paths([args.images])[: args.count]
    payloads = [(Path(p).name, Path(p).read_bytes()) for p in paths]
    started = time.perf_counter()
    analyzer = XrayAnalyzer(args.run)
    load_seconds = time.perf_counter() - started
    options = {} if args.max_batch is None else {"max_batch": args.max_batch}
    app = create_app(analyzer, **options)
    port = free_port()
    server, thread = start_server(app, port)
    url = f"http://127.0.0.1:{port}/api/predict"
    try:
        load(url, payloads, 1, 2)  # warm-up: the first calls compile
        memory_before = resident_mb()
        runs = []
        for clients in args.clients:
            sizes_before = len(app.state.batcher.batch_sizes)
            result = load(url, payloads, clients, args.requests)
            sizes = app.state.batcher.batch_sizes[sizes_before:]
            result["mean_batch"] = round(float(np.mean(sizes)), 2) if sizes else None
            result["largest_batch"] = max(sizes, default=None)
            result["resident_mb_after"] = round(resident_mb(), 1)
            runs.append(result)
            print(json.dumps(result), flush=True)
    finally:
        server.should_exit = True
        thread.join(10)
    summary = {"model": analyzer.config.model, "image_size": analyzer.config.image_size,
               "lungs": analyzer.config.lungs, "backend": keras.backend.backend(), "cpus": os.cpu_count(),
               "images": len(payloads), "model_load_seconds": round(load_seconds, 2),
               "resident_mb_before": round(memory_before, 1),
               "resident_mb_growth": round(resident_mb() - memory_before, 1), "runs": runs}
    text = json.dumps(summary, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
