"""Which doubt score tells a model's mistakes on a source it never saw? Measured on leave-one-source-out runs.

For each fold of a ``covidxray cv --group-by source`` run (its ``fold-N`` folders hold the model),
the fold's validation images (sources it trained on) and test images (the source held out) are
scored once and written to ``scores-fold-N.csv`` in ``--out``: the calibrated probabilities, the
familiarity distance (:mod:`covidxray.inference.familiarity`) and the run's own flag. Each doubt
rule then gets a threshold on the validation images (so that ``FLAG_SHARE`` of them, the shipped
operating point, are flagged), and on the held-out source the table gives: the share flagged, the
share of the model's mistakes flagged, accuracy on the images answered, and the area under the
risk-coverage curve (error rate against the share answered; lower is better)::

    python benchmarks/abstention.py runs/loso4-crop --out benchmarks/results/abstention
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from refit_familiarity import part  # a part of a run's split, read and prepared as the model saw it

from covidxray.inference.familiarity import FLAG_SHARE  # each rule flags this share of the validation images


def score_fold(fold: Path, out: Path) -> pd.DataFrame:
    """Per-image probabilities, doubt scores and the run's own flag for a fold's validation and test
    images (cached in ``out``)."""
    cached = out / f"scores-{fold.name}.csv"
    if cached.is_file():
        return pd.read_csv(cached, keep_default_na=False)
    from covidxray.inference.familiarity import model_features
    from covidxray.inference.predictor import load_predictor

    predictor = load_predictor(fold)
    split = pd.read_csv(fold / "split.csv", dtype=str, keep_default_na=False)
    frames = []
    for name in ("validation", "test"):
        with tempfile.TemporaryDirectory() as scratch:
            prepared, targets, table = part(predictor, split, name, Path.cwd(), Path(scratch))
        probabilities, predicted = predictor.predict(prepared)
        features = model_features(predictor.model, prepared, features=predictor.feature_model)
        frame = pd.DataFrame({"split": name, "path": table["path"], "source": table["source"], "target": targets,
                              "predicted": predicted, "distance": predictor.familiarity.distances(features),
                              "flagged": predictor.familiarity.unlike(features, probabilities)})
        for i, label in enumerate(predictor.classes):
            frame[f"p_{label}"] = probabilities[:, i]
        frames.append(frame)
    scores = pd.concat(frames, ignore_index=True)
    scores.to_csv(cached, index=False)
    return scores


def doubt_scores(scores: pd.DataFrame) -> dict[str, np.ndarray]:
    """Candidate doubt scores per image (higher: more doubtful)."""
    probabilities = scores.filter(like="p_").to_numpy()
    top = np.sort(probabilities, axis=1)
    validation = (scores["split"] == "validation").to_numpy()
    distance = scores["distance"].to_numpy()
    low_confidence = 1 - top[:, -1]
    margin = -(top[:, -1] - top[:, -2])
    # Each score over its own validation quantile at the operating point: the larger ratio decides.
    both = np.maximum(distance / np.quantile(distance[validation], 1 - FLAG_SHARE / 2),
                      low_confidence / np.quantile(low_confidence[validation], 1 - FLAG_SHARE / 2))
    return {"familiarity distance": distance, "1 - top probability": low_confidence, "-margin (top two)": margin,
            "distance or low probability": both}


def measure(scores: pd.DataFrame, fold: str) -> list[dict]:
    from covidxray.evaluation.metrics import risk_coverage

    validation = (scores["split"] == "validation").to_numpy()
    test = ~validation
    correct = (scores["target"] == scores["predicted"]).to_numpy()
    held_out = ", ".join(sorted(set(scores.loc[test, "source"])))

    def row(rule: str, flagged: np.ndarray, doubt: np.ndarray | None = None) -> dict:
        curve = risk_coverage(correct[test], doubt[test]) if doubt is not None else {}
        mistakes, answered = test & ~correct, test & ~flagged
        return {"fold": fold, "held_out": held_out, "rule": rule, "test_images": int(test.sum()),
                "test_accuracy": float(correct[test].mean()),
                "validation_flagged": float(flagged[validation].mean()), "test_flagged": float(flagged[test].mean()),
                "mistakes_flagged": float(flagged[mistakes].mean()) if mistakes.any() else None,
                "accuracy_answered": float(correct[answered].mean()) if answered.any() else None,
                "aurc": curve.get("aurc"), "aurc_best_possible": curve.get("aurc_best")}

    rows = [row(name, doubt > np.quantile(doubt[validation], 1 - FLAG_SHARE), doubt)
            for name, doubt in doubt_scores(scores).items()]
    return rows + [row("the run's own flag (its familiarity.npz)", scores["flagged"].to_numpy(dtype=bool))]


def markdown(rows: list[dict]) -> str:
    def pct(v):
        return "" if v is None else f"{100 * v:.1f}%"

    lines = ["| held-out source (images, accuracy) | rule | flagged: validation | flagged: held out | "
             "mistakes flagged | accuracy answered | AURC (best possible) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        aurc = "" if r["aurc"] is None else f"{r['aurc']:.3f} ({r['aurc_best_possible']:.3f})"
        lines.append(f"| {r['held_out']} ({r['test_images']}, {pct(r['test_accuracy'])}) | {r['rule']} | "
                     f"{pct(r['validation_flagged'])} | {pct(r['test_flagged'])} | {pct(r['mistakes_flagged'])} | "
                     f"{pct(r['accuracy_answered'])} | {aurc} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cv_run", type=Path, help="a covidxray cv --group-by source output folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for scores-fold-N.csv, abstention.json and .md")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fold in sorted(args.cv_run.glob("fold-*")):
        if (fold / "model.keras").is_file() and (fold / "metrics.json").is_file():
            rows += measure(score_fold(fold, args.out), fold.name)
    (args.out / "abstention.json").write_text(json.dumps(rows, indent=1))
    (args.out / "abstention.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
