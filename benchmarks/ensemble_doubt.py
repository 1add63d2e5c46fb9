"""Does the disagreement of several models tell their ensemble's mistakes on a source none saw?

    python benchmarks/ensemble_doubt.py --member benchmarks/results/cv/loso4-crop \
        --member benchmarks/results/cv/loso4-effl0 --markdown ensemble-doubt.md

Each ``--member``: a cross-validation folder of one model (``covidxray cv --out``, or the fold
results kept in ``benchmarks/results/cv/NAME``) whose folds tested the same images; each fold that
all hold is scored, read as ``fold_ensemble.py`` reads them (run it from where the
cross-validation ran). The ensemble is the mean of the members' probabilities (as ``covidxray
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
from fold_ensemble import add_member_option, fold_members, shared_folds
from harness import markdown_table, write_results

from covidxray.evaluation.metrics import risk_coverage


def doubts(members: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Candidate doubts of the members' ensemble, per image (higher: less sure)."""
    mean = np.mean(members, axis=0)
    top = 1 - mean.max(axis=1)
    voted = mean.argmax(axis=1)
    return {
        "one less the ensemble's top probability": top,
        "the members disagree on the class (ties by the above)":
            np.mean([m.argmax(1) != voted for m in members], axis=0) + 1e-3 * top,
        "total variation between the members": np.mean([np.abs(m - mean).sum(axis=1) for m in members], axis=0),
    }


def score_fold(members: list[Path], share: float) -> list[dict]:
    rows, _, targets, probabilities = fold_members(members)
    correct = np.mean(probabilities, axis=0).argmax(axis=1) == targets
    wrong = max(int((~correct).sum()), 1)
    source = ", ".join(sorted(rows["source"].fillna("").astype(str).unique()))
    calls = np.array([p.argmax(1) for p in probabilities])
    common = {"fold": members[0].name, "source": source, "images": len(rows), "accuracy": float(correct.mean()),
              "members_accuracy": [float(np.mean(c == targets)) for c in calls],
              "disagree": float(np.mean((calls != calls[0]).any(axis=0)))}
    results = []
    for name, doubt in doubts(probabilities).items():
        curve = risk_coverage(correct, doubt)
        most = np.argsort(-doubt, kind="stable")[: int(round(share * len(doubt)))]
        results.append({**common, "doubt": name, "aurc": curve["aurc"], "aurc_best": curve["aurc_best"],
                        "mistakes_in_most_doubtful": float((~correct[most]).sum() / wrong)})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_member_option(parser)
    parser.add_argument("--share", type=float, default=0.3, help="share of the images left unanswered")
    parser.add_argument("--out", default="ensemble_doubt.json")
    parser.add_argument("--markdown", default="ensemble_doubt.md")
    args = parser.parse_args(argv)
    results = [row for fold in shared_folds(args.member) for row in score_fold(fold, args.share)]
    table = markdown_table(
        ["held-out source (images)", "ensemble accuracy (members)", "members disagree", "doubt", "AURC (best)",
         f"mistakes among the {args.share:.0%} most doubtful"],
        [[f"{r['source']} ({r['images']})",
          f"{r['accuracy']:.1%} ({', '.join(f'{m:.1%}' for m in r['members_accuracy'])})", f"{r['disagree']:.1%}",
          r["doubt"], f"{r['aurc']:.3f} ({r['aurc_best']:.3f})", f"{r['mistakes_in_most_doubtful']:.1%}"]
         for r in results])
    write_results(args.out, {"members": [str(m) for m in args.member], "share": args.share, "results": results},
                  args.markdown, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
