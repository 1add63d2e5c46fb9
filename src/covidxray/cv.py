"""K-fold cross-validation: every image is tested once, by a model that never saw its patient.

Each fold holds out one stratified fold as test data, draws a validation split from the rest
(for the checkpoint, early stopping and calibration), trains, and scores the held-out fold.
``cv.json`` and ``cv.md`` give per-fold and mean +- sd metrics, and the pooled out-of-fold
metrics with 95% intervals over patients. Each fold is a run directory of its own
(``fold-1/`` ...); a fold that finished is reused when the same command is run again.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray import rundir
from covidxray.calibration import decide
from covidxray.config import TrainConfig
from covidxray.data.splits import assign_folds
from covidxray.errors import CovidXrayError
from covidxray.evaluate import decided_metrics
from covidxray.files import atomic_save
from covidxray.labels import COVID
from covidxray.metrics import confounding_warning
from covidxray.plots import plot_confusion
from covidxray.progress import progress_bar
from covidxray.report import DISCLAIMER, covid_row, interval_text, percent, save_figure, source_section, write_report
from covidxray.train import evaluate_splits, fit, load_data, split_data

log = logging.getLogger(__name__)

CV_JSON, CV_REPORT, CV_MATRIX = "cv.json", "cv.md", "cv_mat.png"
FOLD_PREDICTIONS = "test_predictions.csv"
SUMMARY_METRICS = ("accuracy", "loss", "sensitivity", "specificity", "auc")


def cross_validate(config: TrainConfig, out: str | Path, folds: int = 5, *, overwrite: bool = False,
                   verbose: int = 0, progress: bool | None = None) -> dict:
    """Train and test ``folds`` models; returns ``cv.json``'s content and writes ``out``."""
    config = config.resolve()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CovidXrayError(f"{out}: is a file, not a folder; choose another --out")
    if (out / CV_JSON).exists() and not overwrite:
        raise CovidXrayError(f"{out}: already holds a finished cross-validation; choose another --out or pass --overwrite")
    started = time.perf_counter()
    data = load_data(config, progress=progress)
    fold_of = assign_folds(data.table, folds, pixel_digests=list(data.table["pixels"]), group_by=config.group_by,
                           seed=config.seed)
    out.mkdir(parents=True, exist_ok=True)
    probabilities = np.zeros((len(data.targets), len(config.classes)))
    predictions = np.zeros(len(data.targets), dtype=int)
    per_fold = []
    for k in progress_bar(range(folds), desc="cross-validation", unit="fold", progress=progress):
        test_mask = fold_of == k
        run = rundir.RunDir(out / f"fold-{k + 1}")
        finished = None if overwrite else _finished_fold(run, config, int(test_mask.sum()))
        if finished is None:
            log.info("fold %d of %d: training on %d images, testing on %d", k + 1, folds,
                     int((~test_mask).sum()), int(test_mask.sum()))
            finished = _run_fold(config, data, test_mask, run, verbose)
        else:
            log.info("fold %d of %d: reusing the finished run in %s", k + 1, folds, run.path)
        metrics, fold_probabilities = finished
        probabilities[test_mask] = fold_probabilities
        covid = config.classes.index(COVID) if COVID in config.classes else None
        predictions[test_mask] = decide(fold_probabilities, covid, metrics["calibration"].get("covid_threshold"))
        per_fold.append(_fold_summary(k + 1, metrics))
    # intervals resample patients, whatever the folds were grouped by
    pooled = decided_metrics(data.targets, probabilities, predictions, data.table, config.classes, seed=config.seed)
    result = {
        "protocol": {"folds": folds, "group_by": config.group_by, "seed": config.seed,
                     "images": len(data.targets), "patients": pooled["intervals"]["patients"]},
        "config": asdict(config),
        "per_fold": per_fold,
        "mean": {m: _mean_sd(per_fold, m)[0] for m in SUMMARY_METRICS},
        "sd": {m: _mean_sd(per_fold, m)[1] for m in SUMMARY_METRICS},
        "pooled": pooled,
        "confounding": confounding_warning(data.table["label"], data.table["source"]),
        "skipped": data.skipped,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    save_figure(plot_confusion(pooled["confusion_matrix"], config.classes, title="pooled out-of-fold confusion matrix"),
                out / CV_MATRIX)
    rundir.RunDir(out).write_json(CV_JSON, result)
    write_report(out / CV_REPORT, render_cv_report(result))  # cv.md and cv.html
    return result


def _run_fold(config: TrainConfig, data, test_mask: np.ndarray, run: rundir.RunDir, verbose: int):
    """Train and score one fold; a fold interrupted with the same settings continues from its backup."""
    prepared = split_data(config, data, test_mask=test_mask)
    if not _same_config(run, config):
        shutil.rmtree(run.file(rundir.BACKUP), ignore_errors=True)
    run.create()
    config.save(run.file(rundir.CONFIG))
    rundir.write_csv(run.file(rundir.SPLIT), prepared.table)
    training = fit(config, prepared, run, verbose=verbose)
    metrics, test_probabilities = evaluate_splits(run.load_model(), prepared, config)
    metrics["run"] = training
    frame = pd.DataFrame(test_probabilities, columns=[f"p_{c}" for c in config.classes])
    frame.insert(0, "path", prepared.table.loc[prepared.mask("test"), "path"].to_numpy())
    atomic_save(run.file(FOLD_PREDICTIONS), lambda tmp: frame.to_csv(tmp, index=False))
    run.write_json(rundir.CALIBRATION, {k: metrics["calibration"][k]
                                        for k in ("temperature", "covid_threshold", "target_sensitivity")})
    run.write_json(rundir.METRICS, metrics)  # last: its presence marks the fold finished
    shutil.rmtree(run.file(rundir.BACKUP), ignore_errors=True)
    return metrics, test_probabilities


def _same_config(run: rundir.RunDir, config: TrainConfig) -> bool:
    try:
        return TrainConfig.load(run.file(rundir.CONFIG)) == config
    except (OSError, ValueError, TypeError):
        return False


def _finished_fold(run: rundir.RunDir, config: TrainConfig, test_images: int):
    """The metrics and test probabilities of a fold finished with the same settings, else None."""
    import json

    try:
        metrics = json.loads(run.file(rundir.METRICS).read_text())
        frame = pd.read_csv(run.file(FOLD_PREDICTIONS))
    except (OSError, ValueError, TypeError):
        return None
    if not _same_config(run, config) or len(frame) != test_images:
        return None
    return metrics, frame[[f"p_{c}" for c in config.classes]].to_numpy()


def _fold_summary(fold: int, metrics: dict) -> dict:
    test = metrics["test"]
    covid = test.get("covid") or {}
    return {"fold": fold, "images": test["n"], "accuracy": test["accuracy"], "loss": test["loss"],
            "sensitivity": covid.get("sensitivity"), "specificity": covid.get("specificity"), "auc": covid.get("auc"),
            "validation_accuracy": metrics["validation"]["accuracy"], "best_epoch": metrics["run"].get("best_epoch"),
            "fit_seconds": metrics["run"].get("fit_seconds")}


def _mean_sd(per_fold: list[dict], metric: str) -> tuple[float | None, float | None]:
    values = [f[metric] for f in per_fold if f.get(metric) is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def render_cv_report(result: dict) -> str:
    """``cv.md``: the protocol, per-fold table, mean +- sd and pooled metrics with intervals."""
    protocol, config, pooled = result["protocol"], result["config"], result["pooled"]
    level = ("patient-grouped (no patient in two folds)" if protocol["group_by"] == "patient"
             else "image-level (--group-by none: one patient's images may be in two folds, which inflates accuracy)")
    data = config["data"] if isinstance(config["data"], str) else ", ".join(config["data"])
    lines = [f"# covidxray cross-validation: {config['model']} on {config['task']}", "", DISCLAIMER, "",
             f"- protocol: {protocol['folds']}-fold, {level}, stratified by label; seed {protocol['seed']}",
             f"- data: `{data}`: {protocol['images']} images of {protocol['patients']} patients",
             f"- model: `{config['model']}` at {config['image_size']} px, up to {config['epochs']} epochs; each fold draws "
             f"a validation split ({percent(config['val_fraction'])}) from its training folds", "",
             "| fold | test images | accuracy | loss | COVID sensitivity | specificity | AUC | best epoch |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in result["per_fold"]:
        auc = "n/a" if f["auc"] is None else f"{f['auc']:.3f}"
        lines.append(f"| {f['fold']} | {f['images']} | {percent(f['accuracy'])} | {f['loss']:.3f} | {percent(f['sensitivity'])} "
                     f"| {percent(f['specificity'])} | {auc} | {f['best_epoch']} |")
    mean, sd = result["mean"], result["sd"]

    def pm(metric: str, percent: bool = True) -> str:
        if mean[metric] is None:
            return "n/a"
        return f"{100 * mean[metric]:.1f} ± {100 * sd[metric]:.1f}%" if percent else f"{mean[metric]:.3f} ± {sd[metric]:.3f}"

    lines.append(f"| **mean ± sd** | | **{pm('accuracy')}** | {pm('loss', False)} | {pm('sensitivity')} "
                 f"| {pm('specificity')} | {pm('auc', False)} | |")
    lines += ["", "## Pooled out-of-fold (every image tested once; 95% CI by bootstrap over patients)", "",
              f"- accuracy: **{percent(pooled['accuracy'])}**{interval_text(pooled, 'accuracy')} ({pooled['n']} images)"]
    if "covid" in pooled:
        lines += ["", "| COVID sensitivity | specificity | ROC AUC |", "|---:|---:|---:|", f"| {covid_row(pooled)} |"]
    lines += source_section(pooled, result.get("confounding"), heading="### Per source (pooled out-of-fold)")
    lines += ["", f"![pooled confusion matrix]({CV_MATRIX})", ""]
    return "\n".join(lines)
