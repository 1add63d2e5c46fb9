"""Time one upload to ``covidxray serve``'s page: decode, predict, Grad-CAM, PNGs, HTML.

    python benchmarks/serve_speed.py --run runs/darkcovidnet-three-class \
        --images ../shared/data/darkcovidnet/covid --count 20
    python benchmarks/serve_speed.py --images ../shared/data/darkcovidnet/covid --count 5   # the default preset

Posts each image to the app in-process (FastAPI's TestClient, no network) after the model is
loaded, and prints one JSON line: model load time, first request, median and worst request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import covidxray  # noqa: F401  (chooses the Keras backend before anything imports Keras)
from covidxray.inference.analysis import XrayAnalyzer
from covidxray.inference.predict import expand_paths
from covidxray.web.app import create_app


def main() -> None:
    import keras
    from fastapi.testclient import TestClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a run directory or preset:NAME (default: the default preset)")
    parser.add_argument("--images", required=True, help="a folder of images")
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    paths = expand_paths([args.images])[: args.count]
    started = time.perf_counter()
    analyzer = XrayAnalyzer(args.run)
    load_seconds = time.perf_counter() - started
    client = TestClient(create_app(analyzer))
    timings = []
    for path in paths:
        started = time.perf_counter()
        response = client.post("/", files={"file": (Path(path).name, Path(path).read_bytes(), "image/png")})
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200 and 'id="heatmap"' in response.text, response.text[:500]
    print(json.dumps({
        "uploads": len(paths), "model": analyzer.config.model, "image_size": analyzer.config.image_size,
        "backend": keras.backend.backend(), "cpus": os.cpu_count(), "model_load_seconds": round(load_seconds, 2),
        "first_request_seconds": round(timings[0], 2), "median_seconds": round(statistics.median(timings[1:] or timings), 3),
        "worst_seconds": round(max(timings[1:] or timings), 3),
    }))


if __name__ == "__main__":
    main()
