"""Does re-estimating batch-norm statistics on a new hospital's images help? Measured on leave-one-source-out runs.

AdaBN (Li et al., "Revisiting batch normalization for practical domain adaptation", 2016): a model
trained on some hospitals normalises each layer with the mean and variance of their images; on a
hospital it never saw, the same layers receive other statistics. Recomputing them on the new
hospital's (unlabelled) images, and nothing else, is test-time adaptation without labels.

For each fold of a ``covidxray cv --group-by source`` run (its ``fold-N`` folders hold the model),
the held-out source's test images are predicted as trained, then again after
:func:`~covidxray.models.batchnorm.recalibrate_batch_norm` on those same images. ``--out`` gets one
folder per fold with the fold's ``config.json`` and the adapted ``test_predictions.csv`` (so that
``benchmarks/paired_auc.py --first RUN --second OUT`` pairs them), and ``adapt.json`` with each
fold's accuracy, COVID AUC and films called COVID-19, before and after::

    python benchmarks/adapt_batch_norm.py runs/loso4-crop --out benchmarks/results/cv/loso4-crop-adabn
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from harness import model_folds
from refit_familiarity import part  # a part of a run's split, read and prepared as the model saw it
from sklearn.metrics import roc_auc_score


def summary(targets: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, films called COVID-19 and (where the images hold both) the COVID AUC."""
    covid = classes.index("covid")
    decided = probabilities.argmax(axis=1)
    positive = targets == covid
    result = {"images": len(targets), "accuracy": float((decided == targets).mean()),
              "called_covid": int((decided == covid).sum()), "covid_images": int(positive.sum())}
    if positive.any() and not positive.all():
        result["covid_auc"] = float(roc_auc_score(positive, probabilities[:, covid]))
    return result


def adapt_fold(fold: Path, out: Path, root: Path) -> dict:
    """Predict a fold's test images before and after re-estimating batch-norm statistics on them."""
    from covidxray.inference.predictor import load_predictor
    from covidxray.models.batchnorm import recalibrate_batch_norm

    predictor = load_predictor(fold)
    split = pd.read_csv(fold / "split.csv", dtype=str, keep_default_na=False)
    with tempfile.TemporaryDirectory() as scratch:
        images, targets, table = part(predictor, split, "test", root, Path(scratch))
    before, _ = predictor.predict(images)
    layers = recalibrate_batch_norm(predictor.model, images)
    after, _ = predictor.predict(images)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(fold / "config.json", out / "config.json")
    recorded = pd.read_csv(fold / "test_predictions.csv")
    adapted = pd.DataFrame(after, columns=[f"p_{name}" for name in predictor.classes])
    adapted.insert(0, "path", [str(Path(p).resolve()) for p in table["path"]])
    recorded_paths = [str(Path(p).resolve()) for p in recorded["path"]]
    if set(recorded_paths) != set(adapted["path"]):
        raise SystemExit(f"{fold}: the test images read now are not those of test_predictions.csv")
    adapted.set_index("path").reindex(recorded_paths).reset_index().to_csv(out / "test_predictions.csv", index=False)
    source = sorted(set(table["source"]))
    return {"fold": fold.name, "held_out": source, "batch_norm_layers": layers,
            "before": summary(targets, before, predictor.classes), "after": summary(targets, after, predictor.classes)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a covidxray cv --group-by source folder (fold-N folders with models)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the adapted fold predictions")
    parser.add_argument("--fold", type=int, action="append", help="only these folds (repeatable; default all)")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"),
                        help="the folder relative paths of split.csv are under (default ../shared/data)")
    args = parser.parse_args(argv)
    folds = model_folds(args.run)
    if args.fold:
        folds = [p for p in folds if int(p.name.split("-")[1]) in args.fold]
    if not folds:
        print(f"error: {args.run} holds no fold-N folder with a model.keras", file=sys.stderr)
        return 2
    record = args.out / "adapt.json"
    results = json.loads(record.read_text()) if record.is_file() else {}
    for fold in folds:
        if fold.name in results:
            continue
        results[fold.name] = adapt_fold(fold, args.out / fold.name, args.data_root)
        print(json.dumps(results[fold.name]), flush=True)
        record.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
