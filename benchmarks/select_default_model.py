"""Choose the default model by test accuracy per CPU-minute.

Trains each candidate (model x image size) on the same patient-grouped three-class split of
DarkCovidNet and records wall time (decoding excluded: it is cached) and test accuracy. Each
candidate goes through the steps of ``covidxray train`` (``covidxray.training``: ``prepare_data``,
``fit``, ``evaluate_splits``), without the figures and report; ``minutes`` times ``fit`` alone.

    python benchmarks/select_default_model.py --data ../shared/data/darkcovidnet \
        --candidates compactnet:128 compactnet:160 darkcovidnet:256 --epochs 30 --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import covidxray  # noqa: F401  (chooses the Keras backend before anything imports Keras)
from covidxray import rundir
from covidxray.config import TrainConfig
from covidxray.models import load_model
from covidxray.training.data import prepare_data
from covidxray.training.fit import fit
from covidxray.training.train import evaluate_splits


def main(argv=None) -> None:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--task", default="three-class")
    parser.add_argument("--candidates", nargs="+", default=["compactnet:128", "compactnet:160", "darkcovidnet:256"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="model_selection.jsonl")
    args = parser.parse_args(argv)
    for candidate in args.candidates:
        name, size = candidate.split(":")
        config = TrainConfig(data=args.data, task=args.task, model=name, image_size=int(size),
                             epochs=args.epochs, patience=args.patience, seed=args.seed,
                             learning_rate=args.learning_rate, batch_size=args.batch_size).resolve()
        data = prepare_data(config)
        with tempfile.TemporaryDirectory() as folder:
            run = rundir.RunDir(folder)
            started = time.perf_counter()
            training = fit(config, data, run, verbose=2)
            minutes = (time.perf_counter() - started) / 60
            metrics, _, _ = evaluate_splits(load_model(run.require(rundir.MODEL)), data, config)
        row = {"model": name, "image_size": int(size), "seed": args.seed, "epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": args.batch_size, "minutes": round(minutes, 2),
               **training, "val_accuracy": metrics["validation"]["accuracy"],
               "test_accuracy": metrics["test"]["accuracy"], "backend": keras.backend.backend(),
               "cpus": os.cpu_count()}
        row["test_accuracy_per_minute"] = round(row["test_accuracy"] / minutes, 4)
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
