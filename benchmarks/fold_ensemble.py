"""What does averaging several cross-validations' models (seeds, backbones) give on each held-out fold?

    python benchmarks/fold_ensemble.py --member benchmarks/results/cv/loso4-crop \
        --member benchmarks/results/cv/loso4-crop-seed1 --member benchmarks/results/cv/loso4-crop-seed2 \
        --out ensemble.json --markdown ensemble.md

Each ``--member`` is a cross-validation folder (``covidxray cv --out``, or the fold results kept in
``benchmarks/results/cv/NAME``) whose folds tested the same images; every fold that all members
hold is scored, read as ``paired_auc.py`` reads them (run it from where the cross-validation ran).
The ensemble is the mean of the members' calibrated probabilities (``covidxray ensemble`` averages
them before calibration), its class the most probable one. Per fold: the accuracy of each member
and of the ensemble; where the fold holds COVID and non-COVID images, the COVID AUC, with the
paired difference of the ensemble to each member (whole-patient resamples,
``paired_auc_difference``); where it holds no COVID image (a held-out source of normal films), how
many of them each one calls COVID-19.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from harness import markdown_table, write_results
from paired_auc import fold_pair, folds, paired_auc_difference
from sklearn.metrics import roc_auc_score


def fold_members(members: list[Path]) -> tuple:
    """One fold of every member (the same images): the images' rows of their datasets, the classes,
    the true class indices and each member's probabilities, as ``paired_auc.fold_pair`` reads two."""
    pairs = [fold_pair(members[0], member) for member in members]
    rows, classes, targets = pairs[0][:3]
    return rows, classes, targets, [pairs[0][3]] + [pair[4] for pair in pairs[1:]]


def add_member_option(parser: argparse.ArgumentParser) -> None:
    """``--member``, repeated: the cross-validation folders of the scripts that score several fold by fold."""
    parser.add_argument("--member", type=Path, action="append", required=True,
                        help="a cross-validation folder; repeat for each member (two or more)")


def shared_folds(members: list[Path]) -> list[list[Path]]:
    """Per fold that every member (two or more) holds, its folder in each member."""
    if len(members) < 2:
        raise SystemExit("give two or more --member folders")
    member_folds = [folds(member) for member in members]
    shared = sorted(set.intersection(*(set(f) for f in member_folds)))
    if not shared:
        raise SystemExit(f"{', '.join(map(str, members))}: no fold that every member holds")
    return [[f[name] for f in member_folds] for name in shared]


def score_fold(members: list[Path], samples: int) -> dict:
    """One fold of every member (the same images): the members' and the ensemble's scores."""
    from covidxray.data.splits import split_groups
    from covidxray.labels import covid_index

    rows, classes, targets, probabilities = fold_members(members)
    mean = np.mean(probabilities, axis=0)
    covid = covid_index(classes)
    positive = targets == covid
    result = {"fold": members[0].name, "images": len(rows),
              "sources": sorted(rows["source"].fillna("").astype(str).unique()),
              "accuracy": [float(np.mean(p.argmax(1) == targets)) for p in probabilities],
              "ensemble_accuracy": float(np.mean(mean.argmax(1) == targets))}
    if positive.any() and not positive.all():
        result["auc"] = [float(roc_auc_score(positive, p[:, covid])) for p in probabilities]
        groups = split_groups(rows)
        result["paired"] = [paired_auc_difference(targets, p, mean, groups, covid, samples=samples)
                            for p in probabilities]
        result["ensemble_auc"] = result["paired"][0]["second"]
    elif not positive.any():
        result["called_covid"] = [int(np.sum(p.argmax(1) == covid)) for p in probabilities]
        result["ensemble_called_covid"] = int(np.sum(mean.argmax(1) == covid))
    return result


def _row(result: dict) -> list[str]:
    members = ", ".join(f"{a:.1%}" for a in result["accuracy"])
    if "auc" in result:
        score = (f"COVID AUC {result['ensemble_auc']:.3f} ({', '.join(f'{a:.3f}' for a in result['auc'])})",
                 "; ".join(f"{d['difference']:+.3f} [{d['interval'][0]:+.3f} to {d['interval'][1]:+.3f}]"
                           for d in result["paired"]))
    elif "called_covid" in result:
        score = (f"called COVID-19: {result['ensemble_called_covid']} ({', '.join(map(str, result['called_covid']))})",
                 "")
    else:
        score = ("", "")
    return [f"{', '.join(result['sources'])} ({result['images']})", f"{result['ensemble_accuracy']:.1%} ({members})",
            *score]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_member_option(parser)
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--out", default="fold_ensemble.json")
    parser.add_argument("--markdown", default="fold_ensemble.md")
    args = parser.parse_args(argv)
    results = [score_fold(fold, args.samples) for fold in shared_folds(args.member)]
    table = markdown_table(
        ["held-out source (images)", "ensemble accuracy (members)", "ensemble (members)",
         "ensemble - each member, paired [95% CI]"],
        [_row(result) for result in results])
    write_results(args.out, {"members": [str(m) for m in args.member], "results": results}, args.markdown, table)
    print(table)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
