"""A finished cross-validation scored again with test-time augmentation: same folds, same models.

    python benchmarks/cv_tta.py --cv runs/paper-binary-image --tta 8 --out runs/paper-binary-image-tta8

``--cv`` is a ``covidxray cv --out`` folder whose folds kept their ``model.keras``. Each fold's
model predicts its own test images (the rows of its ``test_predictions.csv``) as each image
averaged with ``--tta - 1`` draws of the model's training augmentation
(:func:`covidxray.inference.predict.predict_augmented`), decided by the fold's own calibration,
and the folds are pooled as ``cv`` pools them (intervals over patients). Nothing is trained:
the change is the scoring alone, chosen before looking at the test folds.

``--out`` gets a folder of the same shape as the cross-validation's fold results (``fold-K/``
with ``config.json``, ``metrics.json`` and ``test_predictions.csv``), so
``benchmarks/paired_auc.py --first CV --second OUT`` pairs the two on the same images, and
``summary.json`` / ``summary.md``: per fold and pooled accuracy, with and without the views.
``--tta 1`` reproduces the cross-validation's own numbers (the check that nothing else changed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from harness import model_folds, write_results

SUMMARY_METRICS = ("accuracy", "loss", "sensitivity", "specificity", "auc")


def score_fold(fold: Path, views: int, *, cache_dir=None):
    """The fold's test images scored with ``views`` views: ``(ScoredPredictions, seconds)``."""
    from covidxray.data.cache import ImageCache
    from covidxray.evaluation.scoring import ScoredPredictions
    from covidxray.inference.predictor import load_predictor
    from covidxray.rundir import TEST_PREDICTIONS as FOLD_PREDICTIONS

    predictor = load_predictor(fold, tta=views)
    tested = pd.read_csv(fold / FOLD_PREDICTIONS)["path"].astype(str)
    split = pd.read_csv(fold / "split.csv", dtype={"patient_id": str}, keep_default_na=False)
    table = split.set_index("path").loc[tested].reset_index()
    if (table["split"] != "test").any():
        raise SystemExit(f"{fold}: {FOLD_PREDICTIONS} names images that split.csv does not hold as test images")
    decoded = ImageCache(cache_dir).load(list(table["path"]), predictor.decode_side)
    if decoded.failed:
        raise SystemExit(f"{fold}: {len(decoded.failed)} test images cannot be read now: "
                         f"{next(iter(decoded.failed.values()))}")
    started = time.perf_counter()
    inputs = predictor.prepare(decoded.images, list(table["pixels"]))
    raw = predictor.predict_raw(inputs.images)
    seconds = time.perf_counter() - started
    targets = table["label"].map({c: i for i, c in enumerate(predictor.classes)}).to_numpy()
    return ScoredPredictions.from_raw(targets, raw, table, predictor.classes, predictor.calibration), seconds


def rescore(cv: Path, views: int, out: Path, *, cache_dir=None) -> dict:
    """Score every fold of ``cv`` with ``views`` views, write ``out``'s fold folders; the summary."""
    from covidxray.config import TrainConfig
    from covidxray.evaluation.scoring import ScoredPredictions
    from covidxray.labels import probability_columns
    from covidxray.rundir import TEST_PREDICTIONS as FOLD_PREDICTIONS

    folds = model_folds(cv)
    if not folds or not (cv / "cv.json").is_file():
        raise SystemExit(f"{cv}: not a finished cross-validation with its models (cv.json, fold-K/model.keras)")
    finished = json.loads((cv / "cv.json").read_text())
    config = TrainConfig.load(folds[0] / "config.json")
    per_fold, scored_folds = [], []
    for fold in folds:
        scored, seconds = score_fold(fold, views, cache_dir=cache_dir)
        metrics = scored.metrics(seed=config.seed)
        target = out / fold.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(fold / "config.json", target / "config.json")
        frame = pd.DataFrame(scored.probabilities, columns=probability_columns(scored.classes))
        frame.insert(0, "path", scored.table["path"].to_numpy())
        frame.to_csv(target / FOLD_PREDICTIONS, index=False)
        (target / "metrics.json").write_text(json.dumps({"test": metrics, "tta": views}, indent=1) + "\n")
        covid = metrics.get("covid") or {}
        per_fold.append({"fold": int(fold.name[5:]), "images": len(scored), "accuracy": metrics["accuracy"],
                         "loss": metrics["loss"], "sensitivity": covid.get("sensitivity"),
                         "specificity": covid.get("specificity"), "auc": covid.get("auc"),
                         "predict_seconds": round(seconds, 1)})
        scored_folds.append(scored)
        print(f"{fold.name}: {len(scored)} images, accuracy {100 * metrics['accuracy']:.2f}% with {views} view(s) "
              f"(cv: {100 * _cv_fold(finished, fold)['accuracy']:.2f}%), {seconds:.1f} s", file=sys.stderr)
    # pooled in the data's own order (each split.csv lists every image), as cv pools: the same resamples
    table = pd.concat([s.table for s in scored_folds], ignore_index=True)
    position = {path: i for i, path in enumerate(pd.read_csv(folds[0] / "split.csv")["path"].astype(str))}
    order = np.argsort(table["path"].map(position).to_numpy(), kind="stable")
    pooled = ScoredPredictions(np.concatenate([s.targets for s in scored_folds])[order],
                               np.concatenate([s.probabilities for s in scored_folds])[order],
                               np.concatenate([s.predicted for s in scored_folds])[order],
                               table.iloc[order].reset_index(drop=True),
                               scored_folds[0].classes).metrics(seed=config.seed)
    return {"cv": str(cv), "tta": views, "protocol": finished["protocol"], "per_fold": per_fold,
            "mean": {m: _mean(per_fold, m) for m in SUMMARY_METRICS},
            "sd": {m: _sd(per_fold, m) for m in SUMMARY_METRICS},
            "pooled": pooled, "without_tta": {"mean": finished["mean"], "sd": finished["sd"],
                                              "pooled_accuracy": finished["pooled"]["accuracy"],
                                              "pooled_intervals": finished["pooled"]["intervals"]}}


def _cv_fold(finished: dict, fold: Path) -> dict:
    return next(f for f in finished["per_fold"] if f["fold"] == int(fold.name[5:]))


def _mean(per_fold, metric):
    values = [f[metric] for f in per_fold if f[metric] is not None]
    return float(np.mean(values)) if values else None


def _sd(per_fold, metric):
    values = [f[metric] for f in per_fold if f[metric] is not None]
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def markdown(summary: dict) -> str:
    pooled, before = summary["pooled"], summary["without_tta"]
    ci, ci0 = pooled["intervals"]["accuracy"], before["pooled_intervals"]["accuracy"]
    protocol = summary["protocol"]
    lines = [f"{summary['cv']}: {protocol['folds']} folds grouped by {protocol['group_by']}, {protocol['images']} "
             f"images; test-time augmentation with {summary['tta']} views",
             "", "| scoring | accuracy, mean ± sd of folds | pooled accuracy [95% CI] |", "|---|---:|---:|",
             f"| as trained (1 view) | {100 * before['mean']['accuracy']:.2f} ± {100 * before['sd']['accuracy']:.2f}% "
             f"| {100 * before['pooled_accuracy']:.2f}% [{100 * ci0[0]:.1f}-{100 * ci0[1]:.1f}] |",
             f"| {summary['tta']} views | {100 * summary['mean']['accuracy']:.2f} ± "
             f"{100 * (summary['sd']['accuracy'] or 0):.2f}% | {100 * pooled['accuracy']:.2f}% "
             f"[{100 * ci[0]:.1f}-{100 * ci[1]:.1f}] |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", required=True, type=Path, help="a finished covidxray cv --out folder with its models")
    parser.add_argument("--tta", required=True, type=int, help="views per image (1: the cross-validation as it was)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the fold results and summary.json/.md")
    parser.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/covidxray)")
    args = parser.parse_args(argv)
    summary = rescore(args.cv, args.tta, args.out, cache_dir=args.cache_dir)
    write_results(args.out / "summary.json", summary, args.out / "summary.md", markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
