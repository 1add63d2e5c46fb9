"""Does one setting beat another on the same held-out images? A paired bootstrap of the COVID AUC.

    python benchmarks/paired_auc.py --first benchmarks/results/cv/loso-baseline \
        --second benchmarks/results/cv/loso-adversary --second benchmarks/results/cv/loso-lungcrop \
        --out paired.json --markdown paired.md

``--first`` and each ``--second`` are cross-validation folders (``covidxray cv --out``, or the fold
results kept in ``benchmarks/results/cv/NAME``: ``config.json`` and ``test_predictions.csv`` per
fold) or single folds. Folds with the same number are compared when both tested the same images;
a fold without COVID and non-COVID images (a held-out source of one kind) is skipped. The true
labels and the patients are read again from the datasets the fold's ``config.json`` names (as
paths from where the cross-validation ran; no image is decoded), so run this from there.

The difference of the two AUCs is resampled with whole patients (images without a patient id:
each on its own), the same resamples for both, as ``covidxray`` resamples its intervals
(:func:`paired_auc_difference`): shared easy and hard images cancel,
so the difference's interval is narrower than the two AUCs' intervals side by side.

``--markdown`` writes one table: per setting and fold, the COVID AUC and the accuracy with the
fold's own intervals (its ``metrics.json``) and the paired difference against ``--first``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from harness import write_results
from sklearn.metrics import roc_auc_score

from covidxray.evaluation.metrics import BOOTSTRAP_SAMPLES, patient_resamples


def paired_auc_difference(y_true: np.ndarray, first: np.ndarray, second: np.ndarray, groups, covid: int, *,
                          samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, level: float = 0.95) -> dict:
    """How much higher the COVID AUC of ``second`` is than that of ``first`` on the same images.

    ``first`` and ``second``: two models' probabilities (n, classes) for the same ``n`` images. The
    two AUCs move together from resample to resample (the same images are easy or hard for both),
    so the interval of their difference, from the same whole-patient resamples for both, is
    narrower than the two AUCs' own intervals side by side suggest. ``share_second_higher``: the
    share of resamples in which ``second`` scores higher.
    """
    positive = np.asarray(y_true) == covid
    if positive.all() or not positive.any():
        raise ValueError("a COVID AUC needs COVID and non-COVID images")
    first, second = np.asarray(first)[:, covid], np.asarray(second)[:, covid]
    patients, resamples = patient_resamples(groups, samples, seed)
    differences = []
    for rows in resamples:
        if positive[rows].any() and not positive[rows].all():
            differences.append(roc_auc_score(positive[rows], second[rows]) - roc_auc_score(positive[rows], first[rows]))
    tail = 100 * (1 - level) / 2
    first_auc, second_auc = roc_auc_score(positive, first), roc_auc_score(positive, second)
    return {"first": float(first_auc), "second": float(second_auc), "difference": float(second_auc - first_auc),
            "interval": [float(np.percentile(differences, tail)), float(np.percentile(differences, 100 - tail))],
            "share_second_higher": float(np.mean(np.asarray(differences) > 0)), "level": level,
            "resamples": len(differences), "unit": "patient", "patients": patients}


def folds(folder: Path) -> dict[str, Path]:
    """``{"fold-1": path, ...}``, or ``{folder.name: folder}`` for a single fold."""
    from covidxray.rundir import TEST_PREDICTIONS as PREDICTIONS

    if (folder / PREDICTIONS).is_file():
        return {folder.name: folder}
    found = {f.name: f for f in sorted(folder.glob("fold-*")) if (f / PREDICTIONS).is_file()}
    if not found:
        raise SystemExit(f"{folder}: no {PREDICTIONS} in it or in its fold-*/ folders; give a cv --out folder")
    return found


def fold_settings(fold: Path):
    """A fold's settings (its ``config.json``), read for its data and classes. The settings since
    removed from covidxray only changed what the fold's model saw (``intensity``, ``lungs`` mask), so
    they are dropped: a run trained with them is refused as a model, but the folds that measured
    them still read here."""
    from covidxray.config import TrainConfig

    values = json.loads((fold / "config.json").read_text())
    values.pop("intensity", None)
    if values.get("lungs") == "mask":
        values.pop("lungs")
    return TrainConfig.from_dict(values, str(fold / "config.json"))


def fold_pair(first: Path, second: Path) -> tuple[pd.DataFrame, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """What two runs of one fold predicted for the same images: the images' rows of their datasets
    (``label``, ``source``, patients), the classes, the true class indices and each run's probabilities."""
    from covidxray.data.sources import load_datasets
    from covidxray.labels import probability_columns
    from covidxray.rundir import TEST_PREDICTIONS as PREDICTIONS

    config, other = fold_settings(first), fold_settings(second)
    def where(data) -> list[str]:  # the folders as read from here: one run may name them relative, one absolute
        return [str(Path(d).resolve()) for d in ([data] if isinstance(data, str) else data)]

    if (where(config.data), config.classes) != (where(other.data), other.classes):
        raise SystemExit(f"{first} and {second} were trained on other data or classes; nothing to pair")
    a, b = pd.read_csv(first / PREDICTIONS), pd.read_csv(second / PREDICTIONS)
    if list(a["path"]) != list(b["path"]):
        raise SystemExit(f"{first} and {second} tested other images; nothing to pair")
    table = load_datasets(config.data).drop_duplicates("path").set_index("path")
    missing = a.loc[~a["path"].isin(table.index), "path"]
    if len(missing):
        raise SystemExit(f"{first}: {len(missing)} tested images are not in {config.data} as read from here "
                         f"(e.g. {missing.iloc[0]}); run this from where the cross-validation ran")
    rows = table.loc[a["path"]].reset_index()
    classes = list(config.classes)
    targets = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    columns = probability_columns(classes)
    return rows, classes, targets, a[columns].to_numpy(), b[columns].to_numpy()


def compare_fold(first: Path, second: Path, samples: int) -> dict | None:
    """The paired AUC difference of one fold, or None where the fold has no COVID AUC."""
    from covidxray.data.splits import split_groups
    from covidxray.labels import covid_index

    rows, classes, targets, a, b = fold_pair(first, second)
    covid = covid_index(classes)
    if not (targets == covid).any() or (targets == covid).all():
        return None
    result = paired_auc_difference(targets, a, b, split_groups(rows), covid, samples=samples)
    sources = sorted(rows["source"].fillna("").astype(str).unique())
    return {"images": len(rows), "sources": sources, **result}


Comparison = list[tuple[Path, Path, dict]]  # per fold with a COVID AUC: its two folders and the paired result


def compare(first: Path, second: Path, samples: int) -> Comparison:
    """The folds the two settings share that have a COVID AUC, each with its two folders and result."""
    a_folds, b_folds = folds(first), folds(second)
    if len(a_folds) == len(b_folds) == 1:
        pairs = [(next(iter(a_folds.values())), next(iter(b_folds.values())))]
    else:
        pairs = [(a_folds[k], b_folds[k]) for k in sorted(set(a_folds) & set(b_folds))]
    compared = []
    for a, b in pairs:
        result = compare_fold(a, b, samples)
        if result is None:
            print(f"{a.name}: no COVID AUC (the held-out images are of one kind); skipped", file=sys.stderr)
            continue
        compared.append((a, b, result))
        low, high = result["interval"]
        print(f"{second.name} {a.name} ({', '.join(result['sources'])}, {result['images']} images): COVID AUC "
              f"{result['first']:.3f} -> {result['second']:.3f}, difference {result['difference']:+.3f} "
              f"[{low:+.3f} to {high:+.3f}], second higher in {100 * result['share_second_higher']:.1f}% of "
              f"{result['resamples']} resamples")
    if not compared:
        raise SystemExit(f"{first} and {second}: no fold in common with COVID and non-COVID images")
    return compared


def _fold_cell(fold: Path, auc: float) -> tuple[str, str]:
    """The AUC and the accuracy of one fold with its intervals, from its ``metrics.json`` where kept."""
    metrics = fold / "metrics.json"
    if not metrics.is_file():
        return f"{auc:.3f}", "-"
    test = json.loads(metrics.read_text())["test"]
    ci = test.get("intervals", {})

    def span(key: str, scale: float, fmt: str) -> str:
        return f" [{fmt.format(ci[key][0] * scale)}-{fmt.format(ci[key][1] * scale)}]" if key in ci else ""

    return (f"{auc:.3f}{span('auc', 1, '{:.3f}')}",
            f"{100 * test['accuracy']:.1f}%{span('accuracy', 100, '{:.1f}')}")


def _row_start(setting: Path, fold: Path, result: dict) -> str:
    """A table row's first cells: the setting, the fold and the sources it tested (with the image count)."""
    return f"| {setting.name} | {fold.name} | {', '.join(result['sources'])} ({result['images']})"


def markdown_table(first: Path, settings: dict[Path, Comparison]) -> str:
    lines = ["| setting | fold | tested sources (images) | COVID AUC [95% CI] | accuracy [95% CI] | "
             f"difference in AUC to {first.name}, paired [95% CI] | higher in |",
             "|---|---|---|---:|---:|---:|---:|"]
    for a, _, result in next(iter(settings.values())):
        auc, accuracy = _fold_cell(a, result["first"])
        lines.append(f"{_row_start(first, a, result)} | {auc} | {accuracy} | | |")
    for second, compared in settings.items():
        for _, b, result in compared:
            auc, accuracy = _fold_cell(b, result["second"])
            low, high = result["interval"]
            lines.append(f"{_row_start(second, b, result)} | {auc} | {accuracy} | "
                         f"{result['difference']:+.3f} [{low:+.3f} to {high:+.3f}] | "
                         f"{100 * result['share_second_higher']:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", required=True, type=Path, help="the setting compared against (a cv folder or a fold)")
    parser.add_argument("--second", required=True, type=Path, action="append",
                        help="a setting compared (a cv folder or a fold); repeat to compare several")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--markdown", help="write the table of every setting and fold here")
    args = parser.parse_args(argv)
    settings = {second: compare(args.first, second, args.samples) for second in args.second}
    data = {"first": str(args.first),
            "settings": {str(k): {"folds": {a.name: result for a, _, result in v}} for k, v in settings.items()}}
    write_results(args.out, data, args.markdown, markdown_table(args.first, settings))
    if not args.out:
        json.dump(data, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
