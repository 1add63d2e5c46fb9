"""Time prediction with Keras and with ONNX Runtime (the run's ONNX export) on N image files.

    python benchmarks/predict_speed.py --run runs/darkcovidnet-three-class \
        --images ../shared/data/darkcovidnet/pneumonia --count 100
    python benchmarks/predict_speed.py --model compactnet --images ../shared/data/darkcovidnet/pneumonia
    python benchmarks/predict_speed.py --run preset:compactnet_darkcovidnet_ieee8023 \
        --images ../shared/data/darkcovidnet/covid --count 20

``--model`` times an untrained model of that architecture at its default size (speed does not
depend on the weights). Both engines run through a ``Predictor`` (``covidxray.load_predictor``);
the ONNX model is the run's ``model.onnx`` when it has one, else a temporary export. Prints one
JSON line per engine: files/s end to end (reading, decoding, resizing and inference, as
``covidxray predict`` does), images/s of inference alone on decoded arrays (batches of 64),
single-image latency (median), and the largest difference between the two engines' probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from harness import timings

import covidxray  # noqa: F401  (chooses the Keras backend before anything imports Keras)
from covidxray.config import TrainConfig
from covidxray.data.images import read_image, resize_square
from covidxray.inference.decision import Calibration
from covidxray.inference.engines import KerasEngine, OnnxEngine, OnnxModel, predict_arrays
from covidxray.inference.export import export_model
from covidxray.inference.predict import expand_paths
from covidxray.inference.predictor import Predictor, load_predictor
from covidxray.models import create_model
from covidxray.rundir import ONNX_MODEL, RunDir


def untrained(name: str, folder: Path) -> Predictor:
    """An untrained model ``name`` at its default size, three classes, with no calibration."""
    config = TrainConfig(data="unused", model=name).resolve()
    model = create_model(name, num_classes=len(config.classes), image_size=config.image_size, seed=0)
    return Predictor(KerasEngine(model), config, Calibration(), folder)


def main() -> None:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a trained run directory, or preset:NAME")
    source.add_argument("--model", help="an untrained model of this architecture (speed only)")
    parser.add_argument("--images", required=True, help="a folder of images")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=30)
    args = parser.parse_args()
    paths = expand_paths([args.images])[: args.count]
    scratch = tempfile.TemporaryDirectory()
    started = time.perf_counter()
    predictor = load_predictor(args.run) if args.run else untrained(args.model, Path(scratch.name))
    load_seconds = time.perf_counter() - started
    onnx_path = RunDir(predictor.path).file(ONNX_MODEL) if args.run else None
    if onnx_path is None or not onnx_path.is_file():  # never written into the run's folder
        onnx_path = Path(scratch.name) / "model.onnx"
        export_model(predictor.model, "onnx", onnx_path, predictor.classes, predictor.image_size)
    started = time.perf_counter()
    onnx_predictor = replace(predictor, engine=OnnxEngine(OnnxModel(onnx_path)))
    onnx_load_seconds = time.perf_counter() - started
    size = predictor.image_size
    images = np.stack([resize_square(read_image(p), size) for p in paths])[..., None]
    single = images[:1].astype("float32")
    engines = {"keras": (predictor, load_seconds), "onnxruntime": (onnx_predictor, onnx_load_seconds)}
    probabilities = {engine: p.predict_raw(images) for engine, (p, _) in engines.items()}
    difference = float(np.abs(probabilities["keras"] - probabilities["onnxruntime"]).max())
    for engine, (p, seconds) in engines.items():
        def end_to_end(p=p):
            results, failures = p.predict_files(paths)
            assert len(results) == len(paths) and not failures

        end_to_end_seconds = timings(end_to_end, args.repeats)
        inference = min(timings(lambda p=p: predict_arrays(p.model, images), args.repeats))
        row = {
            "engine": engine, "model": predictor.config.model, "image_size": size, "files": len(paths),
            "backend": keras.backend.backend(), "cpus": os.cpu_count(), "load_seconds": round(seconds, 2),
            "first_call_seconds": round(end_to_end_seconds[0], 2),
            "files_per_second": round(len(paths) / min(end_to_end_seconds), 1),
            "inference_images_per_second": round(len(paths) / inference, 1),
            "latency_ms": median_ms(args.latency_calls, lambda p=p: predict_arrays(p.model, single)),
            "max_probability_difference": difference,
        }
        if engine == "keras":  # without model.predict's per-call set-up
            row["latency_predict_on_batch_ms"] = median_ms(args.latency_calls,
                                                           lambda: predictor.model.predict_on_batch(single))
        print(json.dumps(row), flush=True)
    scratch.cleanup()


def median_ms(repeats: int, call) -> float:
    """The median wall time of ``repeats`` calls after one warm-up, in milliseconds."""
    return round(1000 * statistics.median(timings(call, repeats, warmup=1)), 2)


if __name__ == "__main__":
    main()
