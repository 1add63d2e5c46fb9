"""Score predictions the way a run decides, and evaluate a trained run on any labelled dataset."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray import rundir
from covidxray.calibration import (
    Calibration,
    choose_threshold,
    decide,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    scale,
)
from covidxray.data.splits import split_groups
from covidxray.errors import DatasetError
from covidxray.labels import COVID
from covidxray.metrics import classification_metrics, confounding_warning, cross_entropy

log = logging.getLogger(__name__)


def fit_calibration(y_val: np.ndarray, raw_val: np.ndarray, classes, target_sensitivity: float | None) -> Calibration:
    """Temperature (and, for a target sensitivity, the COVID threshold) fitted on validation data."""
    temperature = fit_temperature(y_val, raw_val)
    threshold = None
    if target_sensitivity is not None:
        if COVID not in classes:
            raise DatasetError("--target-sensitivity sets the COVID threshold; this task has no covid class")
        covid = list(classes).index(COVID)
        threshold = choose_threshold(y_val, scale(raw_val, temperature)[:, covid], covid, target_sensitivity)
    return Calibration(temperature, threshold, target_sensitivity)


def calibration_summary(y: np.ndarray, raw: np.ndarray, calibration: Calibration) -> dict:
    """Expected calibration error and loss before and after temperature scaling."""
    calibrated = scale(raw, calibration.temperature)
    return {"ece_before": expected_calibration_error(y, raw), "ece_after": expected_calibration_error(y, calibrated),
            "loss_before": cross_entropy(y, raw), "loss_after": cross_entropy(y, calibrated),
            "bins_before": reliability_bins(y, raw), "bins_after": reliability_bins(y, calibrated)}


def score(y: np.ndarray, raw: np.ndarray, table: pd.DataFrame, classes, calibration: Calibration, *,
          by_source: bool = True, seed: int = 0) -> dict:
    """Metrics of raw model probabilities after the run's calibration and decision rule.

    ``table`` (the images' rows, with ``patient_id`` and ``source``) gives the patients that the
    95% intervals resample and, with ``by_source`` and two or more sources, a breakdown per source.
    """
    classes = tuple(classes)
    covid = classes.index(COVID) if COVID in classes else None
    probabilities = scale(raw, calibration.temperature)
    predictions = decide(probabilities, covid, calibration.covid_threshold)
    return decided_metrics(y, probabilities, predictions, table, classes, by_source=by_source, seed=seed)


def decided_metrics(y: np.ndarray, probabilities: np.ndarray, predictions: np.ndarray, table: pd.DataFrame, classes,
                    *, by_source: bool = True, seed: int = 0) -> dict:
    """Metrics of decided predictions: 95% intervals over the patients of ``table`` and, with
    ``by_source`` and two or more sources, a breakdown per source (also used for pooled CV folds)."""
    groups = split_groups(table.reset_index(drop=True))
    metrics = classification_metrics(y, probabilities, classes, predictions=predictions, groups=groups, seed=seed)
    sources = table["source"].fillna("").astype(str).to_numpy()
    if by_source and len(np.unique(sources)) > 1:
        metrics["per_source"] = {
            str(source): classification_metrics(y[sources == source], probabilities[sources == source], classes,
                                                predictions=predictions[sources == source],
                                                groups=groups[sources == source], seed=seed)
            for source in np.unique(sources)
        }
    return metrics


def per_source_required(table: pd.DataFrame, where: str) -> None:
    """Raise unless the table's ``source`` column holds two or more values."""
    sources = table["source"].fillna("").astype(str).unique()
    if len(sources) < 2:
        raise DatasetError(
            f"{where}: the source column has one value ({sources[0] or 'empty'!r}); a per-source breakdown "
            "needs images from two or more sources (add a source column to the manifest, or drop --per-source)"
        )


def evaluate_run(run_dir: str | Path, data, *, cache_dir=None, progress: bool | None = None,
                 per_source: bool = False, include_seen: bool = False) -> dict:
    """Metrics of the run's model on ``data`` (the shape of ``metrics.json``'s ``"test"``).

    Images of classes the model does not know are left out; a dataset may lack some of the
    model's classes (an all-COVID external set, say): metrics that need them read None.
    Images the run trained or selected its model on (same original file name or same pixels
    as a training or validation image in ``split.csv``) are left out unless ``include_seen``.
    """
    from covidxray.data.loading import load_labelled_images
    from covidxray.predict import predict_arrays

    run = rundir.RunDir(run_dir)
    config = run.load_config()
    calibration = load_calibration(run)
    model = run.load_model()
    loaded = load_labelled_images(data, config.classes, config.image_size, cache_dir=cache_dir,
                                  progress=progress, require_all=False)
    seen = np.zeros(len(loaded.table), dtype=bool) if include_seen else seen_by_run(run, loaded.table)
    if seen.any():
        log.info("left out %d images that the run trained or validated on (pass --include-seen to keep them)",
                 int(seen.sum()))
        if seen.all():
            raise DatasetError(f"{data}: every image was used to train {run_dir}; evaluate on other images")
        loaded = loaded.subset(~seen)
    if per_source:
        per_source_required(loaded.table, str(data))
    raw = predict_arrays(model, loaded.images)
    metrics = score(loaded.targets, raw, loaded.table, config.classes, calibration, seed=config.seed)
    metrics["data"] = data if isinstance(data, str) else [str(d) for d in data]
    metrics["left_out_seen"] = int(seen.sum())
    metrics["confounding"] = confounding_warning(loaded.table["label"], loaded.table["source"])
    metrics["calibration"] = {**calibration.to_dict(), **calibration_summary(loaded.targets, raw, calibration)}
    metrics["skipped"] = loaded.skipped
    return metrics


def load_calibration(run: rundir.RunDir) -> Calibration:
    """The run's calibration; a run trained before calibration existed decides by the top class."""
    path = run.file(rundir.CALIBRATION)
    if not path.is_file():
        return Calibration()
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise DatasetError(f"{path}: not a covidxray calibration ({error}); retrain the run or delete the file") from None


def seen_by_run(run: rundir.RunDir, table: pd.DataFrame) -> np.ndarray:
    """True for rows that are the same image as a training or validation image of the run."""
    path = run.file(rundir.SPLIT)
    if not path.is_file():
        return np.zeros(len(table), dtype=bool)
    split = pd.read_csv(path, dtype=str, keep_default_na=False)
    used = split[split["split"].isin(("train", "validation"))]
    names = {Path(n).stem.lower() for n in used.get("original_name", [])} - {""}
    pixels = set(used.get("pixels", [])) - {""}
    by_name = table["original_name"].map(lambda n: Path(str(n)).stem.lower()).isin(names)
    return (by_name | table["pixels"].isin(pixels)).to_numpy()
