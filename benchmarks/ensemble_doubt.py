"""Does the disagreement of two models tell their ensemble's mistakes on a source neither saw?

    python benchmarks/ensemble_doubt.py --first benchmarks/results/cv/loso4-crop \
        --second benchmarks/results/cv/loso4-effl0 --markdown ensemble-doubt.md

``--first`` and ``--second``: cross-validation folders of two models (``covidxray cv --out``, or the
fold results kept in ``benchmarks/results/cv/NAME``) whose folds tested the same images; each fold
that both hold is scored, read as ``paired_auc.py`` reads them (run it from where the
cross-validation ran). The ensemble is the mean of the two models' probabilities (as ``covidxray
ensemble`` averages). Each candidate doubt orders the held-out images; the table gives its
risk-coverage area (AURC, lower is better; ``evaluation.metrics.risk_coverage``) and the share of
the ensemble's mistakes among the ``--share`` most doubtful images (chance: ``--share`` itself).
No validation images are scored here, so no operating point is set: it compares orderings only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from harness import markdown_table, write_results
from paired_auc import fold_pair, folds

from covidxray.evaluation.metrics import risk_coverage


def doubts(first: np.ndarray, second: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate doubts of the two models' ensemble, per image (higher: less sure)."""
    mean = (first + second) / 2
    top = 1 - mean.max(axis=1)
    return {
        "one less the ensemble's top probability": top,
        "the members disagree on the class (ties by the above)": (first.argmax(1) != second.argmax(1)) + 1e-3 * top,
        "total variation between the members": 0.5 * np.abs(first - second).sum(axis=1),
    }


def score_fold(first: Path, second: Path, share: float) -> list[dict]:
    rows, _, targets, a, b = fold_pair(first, second)
    correct = ((a + b) / 2).argmax(axis=1) == targets
    wrong = max(int((~correct).sum()), 1)
    source = ", ".join(sorted(rows["source"].fillna("").astype(str).unique()))
    common = {"fold": first.name, "source": source, "images": len(rows), "accuracy": float(correct.mean()),
              "members_accuracy": [float(np.mean(p.argmax(1) == targets)) for p in (a, b)],
              "disagree": float(np.mean(a.argmax(1) != b.argmax(1)))}
    results = []
    for name, doubt in doubts(a, b).items():
        curve = risk_coverage(correct, doubt)
        most = np.argsort(-doubt, kind="stable")[: int(round(share * len(doubt)))]
        results.append({**common, "doubt": name, "aurc": curve["aurc"], "aurc_best": curve["aurc_best"],
                        "mistakes_in_most_doubtful": float((~correct[most]).sum() / wrong)})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=Path, required=True)
    parser.add_argument("--second", type=Path, required=True)
    parser.add_argument("--share", type=float, default=0.3, help="share of the images left unanswered")
    parser.add_argument("--out", default="ensemble_doubt.json")
    parser.add_argument("--markdown", default="ensemble_doubt.md")
    args = parser.parse_args(argv)
    first, second = folds(args.first), folds(args.second)
    results = [row for name in sorted(first.keys() & second.keys())
               for row in score_fold(first[name], second[name], args.share)]
    if not results:
        raise SystemExit(f"{args.first} and {args.second} hold no fold of the same name")
    table = markdown_table(
        ["held-out source (images)", "ensemble accuracy (members)", "members disagree", "doubt", "AURC (best)",
         f"mistakes among the {args.share:.0%} most doubtful"],
        [[f"{r['source']} ({r['images']})",
          f"{r['accuracy']:.1%} ({', '.join(f'{m:.1%}' for m in r['members_accuracy'])})", f"{r['disagree']:.1%}",
          r["doubt"], f"{r['aurc']:.3f} ({r['aurc_best']:.3f})", f"{r['mistakes_in_most_doubtful']:.1%}"]
         for r in results])
    write_results(args.out, {"first": str(args.first), "second": str(args.second), "share": args.share,
                             "results": results}, args.markdown, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
