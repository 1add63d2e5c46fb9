"""Time ``covidxray predict`` on N image files, after the model is loaded.

    python benchmarks/predict_speed.py --run runs/darkcovidnet-three-class \
        --images ../shared/data/darkcovidnet/pneumonia --count 100

Prints one JSON line: files, seconds (reading + decoding + resizing + inference) and images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import covidxray  # noqa: F401  (chooses the Keras backend before anything imports Keras)
from covidxray.predict import expand_paths, predict_files
from covidxray.rundir import RunDir


def main() -> None:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--images", required=True, help="a folder of images")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run = RunDir(args.run)
    config = run.load_config()
    paths = expand_paths([args.images])[: args.count]
    started = time.perf_counter()
    model = run.load_model()
    load_seconds = time.perf_counter() - started
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        results, failures = predict_files(model, paths, config.classes, config.image_size, progress=False)
        timings.append(time.perf_counter() - started)
        assert len(results) == len(paths) and not failures
    print(json.dumps({
        "files": len(paths), "model": config.model, "image_size": config.image_size,
        "backend": keras.backend.backend(), "cpus": os.cpu_count(), "model_load_seconds": round(load_seconds, 2),
        "first_call_seconds": round(timings[0], 2), "best_seconds": round(min(timings), 2),
        "images_per_second": round(len(paths) / min(timings), 1),
    }))


if __name__ == "__main__":
    main()
