"""Train a model and write its run directory; resume an interrupted one.

Data flows one way: files -> table -> decoded arrays -> split (:mod:`.data`) -> model and fit
(:mod:`.fit`) -> predictions -> calibration and metrics (:mod:`covidxray.evaluation`) -> figures
and report (:mod:`covidxray.reports`). :func:`train` is the whole pipeline; each step is a
function of its own so that notebooks and other commands can reuse it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import fields, replace
from pathlib import Path

import keras

from covidxray import rundir
from covidxray.backend import runtime_environment
from covidxray.config import Runtime, TrainConfig, stored_weight_decay_conflict
from covidxray.data.sources import confounding_warning
from covidxray.data.splits import SPLITS, run_splits, without_patient_id
from covidxray.errors import CovidXrayError
from covidxray.evaluation.attention import heat_in_lungs
from covidxray.evaluation.calibration import run_calibration
from covidxray.evaluation.scoring import ScoredPredictions
from covidxray.inference.decision import Calibration
from covidxray.inference.engines import predict_arrays
from covidxray.inference.familiarity import FLAG_SHARE, familiarity_summary, fit_familiarity, model_features
from covidxray.inference.preprocess import Preprocessing
from covidxray.models import load_model
from covidxray.reports.report import write_figures_and_report
from covidxray.training.backup import refuse_changes, run_to_resume
from covidxray.training.data import PreparedData, prepare_data
from covidxray.training.distribute import data_parallel
from covidxray.training.fit import check_model, fit
from covidxray.training.tracking import (
    Tracker,
    closing,
    log_finished_run,
    make_tracker,
    run_params,
    write_report_summaries,
)

log = logging.getLogger(__name__)


def evaluate_splits(model: keras.Model, data: PreparedData, config: TrainConfig
                    ) -> tuple[dict, Calibration, dict[str, ScoredPredictions]]:
    """Calibrate on validation data, then score every split.

    Returns the metrics, the fitted decision rule and the scored predictions of each split. Every split is
    scored with the run's calibration (temperature where it lowers the validation loss enough,
    :func:`~covidxray.evaluation.calibration.run_calibration`, and the COVID threshold when a target
    sensitivity was asked for), as ``predict`` and ``evaluate`` will use it; a run without a
    validation split (``--val-fraction 0``) has none to fit it on and keeps the model's own
    probabilities (temperature 1), and its metrics have no ``validation`` entry. Intervals
    resample patients; the test split is broken down by source when it holds several.
    """
    splits = run_splits(config.val_fraction)
    raw = {split: predict_arrays(model, data.part(split)[0]) for split in splits}
    y = {split: data.part(split)[1] for split in splits}
    calibration, metrics_calibration = run_calibration(y, raw, data.classes, config.target_sensitivity)
    scored = {split: ScoredPredictions.from_raw(y[split], raw[split], data.table[data.mask(split)], data.classes,
                                                calibration)
              for split in splits}
    metrics = {split: scored[split].metrics(by_source=split == "test", seed=config.seed) for split in splits}
    metrics["calibration"] = metrics_calibration
    return metrics, calibration, scored


def train(config: TrainConfig, out: str | Path, *, runtime: Runtime | None = None, overwrite: bool = False,
          verbose: int = 1, track: str | Tracker = "none") -> dict:
    """The whole pipeline: returns ``metrics.json``'s content and writes the run directory ``out``.

    ``runtime``: how the run computes on this machine (default :class:`~covidxray.config.Runtime`: one
    device, ``auto`` precision); ``config.json`` records it resolved, and a resumed run computes with it.

    ``track``: ``"mlflow"`` also logs the run to MLflow (:mod:`covidxray.training.tracking`; TensorBoard
    logs are written in every run), or a :class:`~covidxray.training.tracking.Tracker` that the caller
    closes. The tracked run opens once the data is read, so a refused command leaves none behind.

    A folder holding a finished or interrupted run, or anything but a run, is refused unless
    ``overwrite``. Everything that can be checked (settings, backend, the model with its weights,
    the data and its split) is checked before a file is written. Where ``out`` holds a run's files
    (``overwrite``), the new run trains in ``out/.covidxray-staged/`` and replaces them only once
    complete: until then the old run stays whole (an interrupted replacement resumes with
    :func:`resume`; files of ``out`` that are not a run's are kept).
    """
    config = config.resolve()
    runtime = (runtime or Runtime()).resolve(config)
    tracker = make_tracker(track)  # MLflow not installed: an error now
    run = rundir.RunDir(out)
    run.refuse_to_replace(overwrite)
    if runtime.data_parallel:
        data_parallel(config.batch_size, runtime.devices)  # a backend or device problem fails before any file is written
    check_model(config, runtime)  # a weights file that does not fit, too
    started = time.perf_counter()
    data = prepare_data(config, runtime.cache_dir)
    decode_seconds = time.perf_counter() - started
    with closing(tracker, track):
        tracker.start(run.path.resolve().name, run_params(config, runtime),
                      tags={"covidxray.run_dir": str(run.path.resolve())})
        staged = run.stage() if run.run_entries() else None
        target = staged or run
        if staged is None:
            run.path.mkdir(parents=True, exist_ok=True)
            run.remove_temporaries()
        try:
            config.save(target.file(rundir.CONFIG), runtime)
            rundir.write_csv(target.file(rundir.SPLIT), data.table)
            metrics = _run(config, runtime, target, data, started=started, decode_seconds=decode_seconds, resumed=False,
                           verbose=verbose, tracker=tracker)
        except BaseException:
            if staged is not None and not staged.file(rundir.BACKUP).exists():  # nothing to resume: no trace
                shutil.rmtree(staged.path, ignore_errors=True)
            raise
        if staged is not None:
            run.swap_in(staged)
        log_finished_run(tracker, run, metrics)
    return metrics


def resume(run_dir: str | Path, *, cache_dir: str | None = None, verbose: int = 1, track: str | Tracker = "none",
           **settings) -> dict:
    """Continue the interrupted run in ``run_dir`` from its last finished epoch, with its own settings.

    ``settings`` (optional; of :class:`~covidxray.config.TrainConfig` or of its
    :class:`~covidxray.config.Runtime`) are checked against the run's ``config.json`` by their
    ``conflicts``: a resumed run keeps its own settings and runtime, so any that differs is an error.
    ``cache_dir`` may change. A run that trained with a weight decay its schedule no longer implies
    (the former ``--weight-decay``) is refused. Where ``run_dir`` holds an interrupted replacement (``train
    --overwrite`` cut short after its first epoch, in ``run_dir/.covidxray-staged/``), that one is
    continued, and replaces the run in ``run_dir`` once complete. ``track``: as for :func:`train`
    (the tracked run is a new one, with the epochs finished before too).
    """
    tracker = make_tracker(track)
    run, staged = run_to_resume(run_dir)
    target = staged or run
    saved = target.load_config()
    path = target.file(rundir.CONFIG)
    stored = json.loads(path.read_text())
    refused = stored_weight_decay_conflict(stored, str(path))
    if refused:
        raise CovidXrayError(refused)
    runtime = Runtime.from_dict(stored, str(path))
    runtime_names = {f.name for f in fields(Runtime)}
    conflicts = (saved.conflicts({k: v for k, v in settings.items() if k not in runtime_names})
                 + runtime.conflicts({k: v for k, v in settings.items() if k in runtime_names}))
    refuse_changes(path, conflicts)
    config = saved.resolve()
    runtime = (replace(runtime, cache_dir=cache_dir) if cache_dir else runtime).resolve(config)
    if runtime.data_parallel:
        data_parallel(config.batch_size, runtime.devices)
    target.remove_temporaries()
    started = time.perf_counter()
    data = prepare_data(config, runtime.cache_dir)
    decode_seconds = time.perf_counter() - started
    target.check_same_split(data.table, config.data)
    with closing(tracker, track):
        tracker.start(run.path.resolve().name, run_params(config, runtime),
                      tags={"covidxray.run_dir": str(run.path.resolve()), "covidxray.resumed": "true"})
        metrics = _run(config, runtime, target, data, started=started, decode_seconds=decode_seconds, resumed=True,
                       verbose=verbose, tracker=tracker)
        if staged is not None:
            run.swap_in(staged)
        log_finished_run(tracker, run, metrics)
    return metrics


def _run(config: TrainConfig, runtime: Runtime, run: rundir.RunDir, data: PreparedData, *, started: float,
         decode_seconds: float, resumed: bool, verbose: int, tracker: Tracker) -> dict:
    """Fit, evaluate and report in ``run``, which holds the run's config.json and split.csv."""
    training = fit(config, data, run, runtime, verbose=verbose, tracker=tracker)
    model = load_model(run.require(rundir.MODEL))
    metrics, calibration, scored = evaluate_splits(model, data, config)
    calibration.save(run.path)
    test = scored["test"]
    metrics["unlike_training"] = fit_and_check_familiarity(model, data, run, scored, config)
    rows = data.mask("test")
    test_lungs = None if data.lungs is None else data.lungs[rows]
    quality = None if data.lung_quality is None else [q for q, k in zip(data.lung_quality, rows) if k]
    metrics["heat_in_lungs"] = heat_in_lungs(model, data.part("test")[0], test_lungs, quality, test.predicted,
                                             data.table[rows], data.classes)
    prep = Preprocessing.from_config(config, runtime.cache_dir)
    metrics["run"] = {
        **training,
        "model": config.model, "task": config.task, "image_size": config.image_size,
        "parameters": int(model.count_params()), "backend": keras.backend.backend(),
        "mixed_precision": runtime.mixed_precision,
        "data_seconds": round(decode_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
        "images": {split: int((data.table["split"] == split).sum()) for split in SPLITS},
        "images_without_patient_id": int(without_patient_id(data.table).sum()),
        "group_by": config.group_by, "blank_fraction": config.blank_fraction, "blanking": config.blanking,
        **prep.settings(), "lung_fallback": prep.fallback(data.table["path"], data.lung_quality),
        "sources": {str(k): int(v) for k, v in data.table["source"].value_counts().items()},
        "confounding": confounding_warning(data.table["label"], data.table["source"]),
        "skipped": data.skipped,
        "resumed": resumed,
        "environment": runtime_environment(),
    }
    write_figures_and_report(run, config, data.part("test")[0], test, metrics, model=model, lungs=test_lungs,
                             lung_quality=quality)
    write_report_summaries(run, metrics)  # TensorBoard: the test scores and figures
    run.complete(metrics)
    return metrics


def fit_and_check_familiarity(model, data: PreparedData, run: rundir.RunDir, scored: dict[str, ScoredPredictions],
                              config: TrainConfig) -> dict | None:
    """Fit the run's flag (:mod:`covidxray.inference.familiarity`) on its training and validation
    images and the validation images' calibrated probabilities (``scored``: :func:`evaluate_splits`'
    predictions per split), save it, and return how many test images it flags, with the test
    accuracy with and without them. None for a run without a validation split, whose thresholds
    would have no unseen images to be set on: it saves no familiarity and flags nothing."""
    if not config.has_validation:
        return None
    test = scored["test"]
    familiarity = fit_familiarity(model, data.part("train")[0], data.part("validation")[0],
                                  scored["validation"].probabilities)
    familiarity.save(run.path)
    unlike = familiarity.unlike(model_features(model, data.part("test")[0]), test.probabilities)
    return {"threshold": familiarity.threshold, "min_probability": familiarity.min_probability,
            "share": FLAG_SHARE, "test": familiarity_summary(unlike, test.predicted == test.targets)}
