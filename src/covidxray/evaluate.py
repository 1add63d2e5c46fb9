"""Evaluate a trained run on any labelled dataset."""

from __future__ import annotations

from pathlib import Path

from covidxray.metrics import classification_metrics
from covidxray.predict import predict_arrays
from covidxray.rundir import RunDir
from covidxray.train import load_labelled_images


def evaluate_run(run_dir: str | Path, data: str | Path, *, cache_dir=None, progress: bool | None = None) -> dict:
    """Metrics of the run's model on ``data`` (the shape of ``metrics.json``'s ``"test"``).

    Images of classes the model does not know are left out; a dataset may lack some of the
    model's classes (an all-COVID external set, say): metrics that need them read None.
    """
    run = RunDir(run_dir)
    config = run.load_config()
    model = run.load_model()
    table, images, targets, _, failed = load_labelled_images(
        str(data), config.classes, config.image_size, cache_dir=cache_dir, progress=progress, require_all=False
    )
    metrics = classification_metrics(targets, predict_arrays(model, images), config.classes)
    metrics["data"] = str(data)
    metrics["skipped"] = failed
    return metrics
