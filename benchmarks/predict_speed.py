"""Time prediction with Keras and with ONNX Runtime (the run's ONNX export) on N image files.

    python benchmarks/predict_speed.py --run runs/darkcovidnet-three-class \
        --images ../shared/data/darkcovidnet/pneumonia --count 100
    python benchmarks/predict_speed.py --model compactnet --images ../shared/data/darkcovidnet/pneumonia

``--model`` times an untrained model of that architecture at its default size (speed does not
depend on the weights). The ONNX model is the run's ``model.onnx`` when it has one, else a
temporary export. Prints one JSON line per engine: files/s end to end (reading, decoding,
resizing and inference, as ``covidxray predict`` does), images/s of inference alone on decoded
arrays (batches of 64), single-image latency (median), and the largest difference between the
two engines' probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import covidxray  # noqa: F401  (chooses the Keras backend before anything imports Keras)
from covidxray.data.images import read_image, resize_square
from covidxray.export import OnnxModel, export_model
from covidxray.labels import task_classes
from covidxray.models import create_model, get_spec
from covidxray.predict import expand_paths, predict_arrays, predict_files
from covidxray.rundir import ONNX_MODEL, RunDir


def best_of(repeats: int, call) -> tuple[float, float]:
    """(first, best) wall seconds of ``repeats`` calls."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return timings[0], min(timings)


def median_ms(repeats: int, call) -> float:
    call()  # warm-up
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return round(1000 * statistics.median(timings), 2)


def main() -> None:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a trained run directory")
    source.add_argument("--model", help="an untrained model of this architecture (speed only)")
    parser.add_argument("--images", required=True, help="a folder of images")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=30)
    args = parser.parse_args()
    paths = expand_paths([args.images])[: args.count]
    started = time.perf_counter()
    if args.run:
        run = RunDir(args.run)
        config = run.load_config()
        model, classes, size, name = run.load_model(), config.classes, config.image_size, config.model
        onnx_path = run.file(ONNX_MODEL)
    else:
        size, classes, name = get_spec(args.model).image_size, task_classes("three-class"), args.model
        model = create_model(args.model, num_classes=len(classes), image_size=size, seed=0)
        onnx_path = None
    load_seconds = time.perf_counter() - started
    scratch = tempfile.TemporaryDirectory()
    if onnx_path is None or not onnx_path.is_file():
        onnx_path = Path(scratch.name) / "model.onnx"
        export_model(model, "onnx", onnx_path, classes, size)
    started = time.perf_counter()
    onnx_model = OnnxModel(onnx_path)
    onnx_load_seconds = time.perf_counter() - started
    images = np.stack([resize_square(read_image(p), size) for p in paths])[..., None]
    single = images[:1].astype("float32")
    engines = {"keras": (model, load_seconds), "onnxruntime": (onnx_model, onnx_load_seconds)}
    probabilities = {engine: predict_arrays(m, images) for engine, (m, _) in engines.items()}
    difference = float(np.abs(probabilities["keras"] - probabilities["onnxruntime"]).max())
    for engine, (m, seconds) in engines.items():
        def end_to_end(m=m):
            results, failures = predict_files(m, paths, classes, size, progress=False)
            assert len(results) == len(paths) and not failures

        first, best = best_of(args.repeats, end_to_end)
        _, inference = best_of(args.repeats, lambda m=m: predict_arrays(m, images))
        row = {
            "engine": engine, "model": name, "image_size": size, "files": len(paths),
            "backend": keras.backend.backend(), "cpus": os.cpu_count(), "load_seconds": round(seconds, 2),
            "first_call_seconds": round(first, 2), "files_per_second": round(len(paths) / best, 1),
            "inference_images_per_second": round(len(paths) / inference, 1),
            "latency_ms": median_ms(args.latency_calls, lambda m=m: predict_arrays(m, single)),
            "max_probability_difference": difference,
        }
        if engine == "keras":  # without model.predict's per-call set-up
            row["latency_predict_on_batch_ms"] = median_ms(args.latency_calls, lambda: model.predict_on_batch(single))
        print(json.dumps(row), flush=True)
    scratch.cleanup()


if __name__ == "__main__":
    main()
