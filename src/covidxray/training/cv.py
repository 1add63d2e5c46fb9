"""K-fold cross-validation: every image is tested once, by a model that never saw its patient.

With ``group_by="source"`` (leave-one-source-out) each fold holds out one source whole, and
``cv.md`` reports what each held-out source allows: COVID AUC where it holds COVID and other
classes, else COVID sensitivity or specificity, with intervals over patients.

Each fold holds out one stratified fold as test data, draws a validation split from the rest
(for the checkpoint, early stopping and calibration), trains, and scores the held-out fold.
``cv.json`` and ``cv.md`` give per-fold and mean +- sd metrics, and the pooled out-of-fold
metrics with 95% intervals over patients. Each fold is a run directory of its own
(``fold-1/`` ...); a fold that finished is reused when the same command is run again.
``only`` (``--fold K``) trains some folds alone, to spread a long cross-validation over
sessions or machines: the same command then pools them once every fold has finished.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray import rundir
from covidxray.config import RUNTIME, Runtime, TrainConfig, stored_weight_decay_conflict
from covidxray.data.sources import confounding_warning
from covidxray.data.splits import assign_folds, source_folds
from covidxray.errors import CovidXrayError, printable
from covidxray.evaluation.scoring import ScoredPredictions
from covidxray.files import atomic_save, check_can_create
from covidxray.inference.decision import Calibration
from covidxray.labels import probability_columns
from covidxray.models import load_model
from covidxray.progress import progress_bar
from covidxray.reports.cv_report import CV_MATRIX, render_cv_report
from covidxray.reports.markdown import save_figure, write_report
from covidxray.reports.plots import plot_confusion
from covidxray.training.data import load_data, split_data
from covidxray.training.fit import check_model, fit
from covidxray.training.tracking import (
    Tracker,
    closing,
    log_finished_run,
    make_tracker,
    run_params,
    write_report_summaries,
)
from covidxray.training.train import evaluate_splits, fit_and_check_familiarity

log = logging.getLogger(__name__)

CV_JSON, CV_REPORT = "cv.json", "cv.md"
SUMMARY_METRICS = ("accuracy", "loss", "sensitivity", "specificity", "auc")


def cross_validate(config: TrainConfig, out: str | Path, folds: int = 5, *, runtime: Runtime | None = None,
                   overwrite: bool = False, verbose: int = 0, only: list[int] | None = None,
                   track: str | Tracker = "none") -> dict:
    """Train and test ``folds`` models; returns ``cv.json``'s content and writes ``out``.

    ``only``: train just these folds (numbered from 1) and reuse the others where they finished.
    Until every fold has finished no ``cv.json`` is written and the result is ``{"finished":
    [...], "missing": [...]}``, the fold numbers of each.

    ``runtime``, ``track``: as for :func:`~covidxray.training.train.train`: the cross-validation is a tracked run
    with its pooled scores and report, each fold trained or reused a child run of it.
    """
    config = config.resolve()
    runtime = (runtime or Runtime()).resolve(config)
    tracker = make_tracker(track)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CovidXrayError(f"{out}: is a file, not a folder; choose another --out")
    if (out / CV_JSON).exists() and not overwrite:
        raise CovidXrayError(f"{out}: already holds a finished cross-validation; choose another --out or pass --overwrite")
    others = [name for name in rundir.RunDir(out).entries() if not _is_ours(out / name)]
    if others and not overwrite:
        listed = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise CovidXrayError(f"{out}: not empty and not a cross-validation folder (holds {listed}); choose a new or "
                             "empty --out, or pass --overwrite to write into it")
    if not out.exists():
        check_can_create(out.parent, f"--out {out}")
    check_model(config, runtime)  # weights to download or convert fail now, before the data is read
    started = time.perf_counter()
    data = load_data(config, runtime.cache_dir)
    held_out = None
    if config.group_by == "source":
        fold_of, held_out = source_folds(data.table)
        if folds != len(held_out):
            log.info("leave-one-source-out: %d folds, one per source (%s)", len(held_out), ", ".join(held_out))
        folds = len(held_out)
    else:
        fold_of = assign_folds(data.table, folds, pixel_digests=list(data.table["pixels"]),
                               group_by=config.group_by, seed=config.seed)
    outside = sorted(k for k in set(only or ()) if not 1 <= k <= folds)
    if outside:
        raise CovidXrayError(f"--fold {outside[0]}: this cross-validation has folds 1 to {folds}")
    with closing(tracker, track):
        tracker.start(out.resolve().name, run_params(config, runtime, folds=folds),
                      tags={"covidxray.run_dir": str(out.resolve()), "covidxray.command": "cv"})
        out.mkdir(parents=True, exist_ok=True)
        probabilities = np.zeros((len(data.targets), len(config.classes)))
        predictions = np.zeros(len(data.targets), dtype=int)
        per_fold, missing = [], []
        for k in progress_bar(range(folds), desc="cross-validation", unit="fold"):
            test_mask = fold_of == k
            run = rundir.RunDir(out / f"fold-{k + 1}")
            skipped = only is not None and k + 1 not in only
            finished = None if overwrite and not skipped else _finished_fold(run, config, runtime, int(test_mask.sum()))
            if finished is None and skipped:
                missing.append(k + 1)
                continue
            child = tracker.child()  # each fold trained or reused: a run nested in the cross-validation's
            with child.running():
                child.start(f"{out.resolve().name}/{run.path.name}", run_params(config, runtime, fold=k + 1),
                            tags={"covidxray.run_dir": str(run.path.resolve())})
                if finished is None:
                    log.info("fold %d of %d: training on %d images, testing on %d", k + 1, folds,
                             int((~test_mask).sum()), int(test_mask.sum()))
                    finished = _run_fold(config, runtime, data, test_mask, run, verbose, child)
                else:
                    log.info("fold %d of %d: reusing the finished run in %s", k + 1, folds, run.path)
                    if run.file(rundir.HISTORY).is_file():
                        child.log_history(pd.read_csv(run.file(rundir.HISTORY)).to_dict("records"))
                log_finished_run(child, run, finished[0])
            metrics, fold_probabilities = finished
            probabilities[test_mask] = fold_probabilities
            calibration = Calibration.from_dict(metrics["calibration"], str(run.file(rundir.METRICS)))
            predictions[test_mask] = calibration.decide(fold_probabilities, config.classes)
            per_fold.append(_fold_summary(k + 1, metrics, None if held_out is None else held_out[k]))
        if missing:
            log.info("not finished yet of %d folds: %s; run the command again without --fold (or with --fold for "
                     "them) to train them and pool all %d", folds, ", ".join(map(str, missing)), folds)
            return {"finished": [f["fold"] for f in per_fold], "missing": missing}
        # intervals resample patients, whatever the folds were grouped by
        pooled = ScoredPredictions(data.targets, probabilities, predictions, data.table, config.classes).metrics(
            seed=config.seed)
        result = {
            "protocol": {"folds": folds, "group_by": config.group_by, "seed": config.seed,
                         "images": len(data.targets), "patients": pooled["intervals"]["patients"],
                         **({} if held_out is None else {"held_out_sources": held_out})},
            "config": {**config.to_dict(), RUNTIME: runtime.record()},
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
        tracker.log_metrics(cv_metrics(result))
        tracker.log_files(out, (CV_JSON, CV_REPORT, CV_REPORT.replace(".md", ".html"), CV_MATRIX))
    return result


def _run_fold(config: TrainConfig, runtime: Runtime, data, test_mask: np.ndarray, run: rundir.RunDir, verbose: int,
              tracker: Tracker):
    """Train and score one fold; a fold interrupted with the same settings continues from its backup."""
    prepared = split_data(config, data, test_mask=test_mask)
    resumable = _same_config(run, config, runtime) and run.file(rundir.BACKUP).is_dir()
    run.create(keep=(rundir.BACKUP, rundir.MODEL, rundir.HISTORY, rundir.TENSORBOARD) if resumable else ())
    config.save(run.file(rundir.CONFIG), runtime)
    rundir.write_csv(run.file(rundir.SPLIT), prepared.table)
    training = fit(config, prepared, run, runtime, verbose=verbose, tracker=tracker)
    model = load_model(run.require(rundir.MODEL))
    metrics, calibration, scored = evaluate_splits(model, prepared, config)
    test = scored["test"]
    metrics["unlike_training"] = fit_and_check_familiarity(model, prepared, run, scored, config)
    metrics["run"] = training
    frame = pd.DataFrame(test.probabilities, columns=probability_columns(config.classes))
    frame.insert(0, "path", prepared.table.loc[prepared.mask("test"), "path"].to_numpy())
    atomic_save(run.file(rundir.TEST_PREDICTIONS), lambda tmp: frame.to_csv(tmp, index=False))
    calibration.save(run.path)
    write_report_summaries(run, metrics)  # TensorBoard: the fold's test scores
    run.complete(metrics)  # its metrics.json marks the fold finished
    return metrics, test.probabilities


def _same_config(run: rundir.RunDir, config: TrainConfig, runtime: Runtime) -> bool:
    """Whether the fold in ``run`` was trained with ``config`` and in ``runtime``'s precision (a runtime
    choice that changes the numbers beyond the order of float sums), as its ``config.json`` says: an
    older one's top-level runtime keys and weight decay are read as they were written."""
    path = run.file(rundir.CONFIG)
    try:
        stored = json.loads(path.read_text())
        return (TrainConfig.from_dict(stored, str(path)) == config and stored_weight_decay_conflict(stored) is None
                and Runtime.from_dict(stored, str(path)).mixed_precision == runtime.mixed_precision)
    except (OSError, ValueError, TypeError, AttributeError, CovidXrayError):
        return False


def _is_ours(path: Path) -> bool:
    """A file or fold folder that cross-validation writes."""
    return path.name in (CV_JSON, CV_REPORT, CV_REPORT.replace(".md", ".html"), CV_MATRIX) or (
        path.name.startswith("fold-") and path.name[5:].isdigit() and path.is_dir())


def _finished_fold(run: rundir.RunDir, config: TrainConfig, runtime: Runtime, test_images: int):
    """The metrics and test probabilities of a fold finished with the same settings, else None (a
    fold whose files do not read back as such is trained again, with a warning)."""
    if not run.file(rundir.METRICS).is_file() or not _same_config(run, config, runtime):
        return None
    try:
        metrics = json.loads(run.file(rundir.METRICS).read_text())
        Calibration.from_dict(metrics["calibration"])
        _fold_summary(0, metrics)
        frame = pd.read_csv(run.file(rundir.TEST_PREDICTIONS))
        probabilities = frame[probability_columns(config.classes)].to_numpy(dtype=float)
        if not np.isfinite(probabilities).all():
            raise ValueError(f"{rundir.TEST_PREDICTIONS} holds probabilities that are not numbers")
    except (OSError, ValueError, TypeError, KeyError, AttributeError, CovidXrayError) as error:
        log.warning("%s: its results do not read back (%s: %s); training the fold again", printable(run.path),
                    type(error).__name__, " ".join(str(error).split()))
        return None
    return (metrics, probabilities) if len(frame) == test_images else None  # other data: trained again


def _fold_summary(fold: int, metrics: dict, held_out: str | None = None) -> dict:
    test = metrics["test"]
    covid = test.get("covid") or {}
    summary = {"fold": fold, "images": test["n"], "accuracy": test["accuracy"], "loss": test["loss"],
               "sensitivity": covid.get("sensitivity"), "specificity": covid.get("specificity"), "auc": covid.get("auc"),
               "validation_accuracy": (metrics.get("validation") or {}).get("accuracy"),  # None: --val-fraction 0
               "best_epoch": metrics["run"].get("best_epoch"),
               "fit_seconds": metrics["run"].get("fit_seconds")}
    unlike = (metrics.get("unlike_training") or {}).get("test") or {}
    summary["share_unlike"] = unlike.get("share_unlike")
    summary["risk_coverage"] = test.get("risk_coverage")
    if held_out is not None:
        summary |= {"held_out": held_out, "measure": held_out_measure(covid),
                    "intervals": {k: v for k, v in test.get("intervals", {}).items() if k in SUMMARY_METRICS},
                    "covid_counts": {k: covid[k] for k in ("tp", "fn", "tn", "fp") if k in covid}}
    return summary


def cv_metrics(result: dict) -> dict:
    """A finished cross-validation's scores as flat names: mean and sd over folds, pooled out-of-fold."""
    pooled, covid = result["pooled"], result["pooled"].get("covid") or {}
    return {**{f"mean_{m}": v for m, v in result["mean"].items()}, **{f"sd_{m}": v for m, v in result["sd"].items()},
            "pooled_accuracy": pooled.get("accuracy"), "pooled_loss": pooled.get("loss"),
            **{f"pooled_covid_{m}": covid.get(m) for m in ("sensitivity", "specificity", "auc")}}


def held_out_measure(covid: dict) -> str:
    """What a held-out source's test allows: ``auc`` with COVID and other images, else ``sensitivity``
    (COVID only) or ``specificity`` (no COVID)."""
    if covid.get("auc") is not None:
        return "auc"
    return "sensitivity" if covid.get("sensitivity") is not None else "specificity"


def _mean_sd(per_fold: list[dict], metric: str) -> tuple[float | None, float | None]:
    values = [f[metric] for f in per_fold if f.get(metric) is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
