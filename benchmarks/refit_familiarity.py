"""Fit a run's or preset's flag (``familiarity.npz``, and its entry in ``metrics.json``) again on its own
split, without retraining.

For a run trained before the flag's rule changed (the shipped presets): the model, its
preprocessing and calibration are read as they are; the training images' features and the
validation images' features and calibrated probabilities give the new thresholds
(:meth:`covidxray.inference.familiarity.Familiarity.fit`); the test split's flagged share and the
accuracy with and without the flagged images are printed and written to ``--out`` as JSON::

    python benchmarks/refit_familiarity.py src/covidxray/presets/compactnet_darkcovidnet_ieee8023_radiographydb \\
        --data-root ../shared/data --out benchmarks/results/refit-familiarity.json

A ``split.csv`` with paths relative to the datasets' parent folder (a preset's) is read under ``--data-root``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd


def part(predictor, split: pd.DataFrame, name: str, root: Path, scratch: Path):
    """The model inputs, targets and table of one part of the split."""
    from covidxray.data.loading import load_labelled_images

    rows = split[split["split"] == name][["path", "label", "patient_id", "source"]].copy()
    rows["path"] = [p if Path(p).is_absolute() else str(root / p) for p in rows["path"]]
    manifest = scratch / f"{name}.csv"
    rows.to_csv(manifest, index=False)
    loaded = load_labelled_images(manifest, predictor.classes, predictor.decode_side, require_all=False)
    return predictor.prepare(loaded.images, list(loaded.table["pixels"])).images, loaded.targets, loaded.table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run or preset folder (its familiarity.npz is replaced)")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"),
                        help="the folder relative paths of split.csv are under (default ../shared/data)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the test split's flag summary")
    args = parser.parse_args(argv)
    from covidxray.files import atomic_write_text
    from covidxray.inference.familiarity import FLAG_SHARE, familiarity_summary, fit_familiarity
    from covidxray.inference.predictor import load_predictor

    predictor = load_predictor(args.run)
    split = pd.read_csv(args.run / "split.csv", dtype=str, keep_default_na=False)
    with tempfile.TemporaryDirectory() as scratch:
        train, _, _ = part(predictor, split, "train", args.data_root, Path(scratch))
        validation, _, _ = part(predictor, split, "validation", args.data_root, Path(scratch))
        test, targets, _ = part(predictor, split, "test", args.data_root, Path(scratch))
    familiarity = fit_familiarity(predictor.model, train, validation, predictor.predict(validation)[0])
    familiarity.save(args.run)
    predictor.familiarity = familiarity
    probabilities, decided = predictor.predict(test)
    unlike = predictor.unlike_training(test, probabilities)
    result = {"run": str(args.run), "share": FLAG_SHARE, "threshold": familiarity.threshold,
              "min_probability": familiarity.min_probability, "test": familiarity_summary(unlike, decided == targets)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    metrics = json.loads((args.run / "metrics.json").read_text())  # the run's own record of its flag, kept true
    metrics["unlike_training"] = {k: v for k, v in result.items() if k != "run"}
    atomic_write_text(args.run / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
