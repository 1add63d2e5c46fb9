"""Which doubt score tells a model's mistakes on a source it never saw? Measured on leave-one-source-out runs.

For each fold of a ``covidxray cv --group-by source`` run (its ``fold-N`` folders hold the model),
the fold's training, validation (sources it trained on) and test images (the source held out) are
scored once and cached in ``--out`` as ``scores-fold-N.npz``: the calibrated probabilities, the
familiarity distance (:mod:`covidxray.inference.familiarity`), the run's own flag, and the features
the candidate doubts read. The candidates: the shipped distance and probability and their
combination; the distance to the nearest class mean instead of to all training images (Lee et al.
2018), on the flag's features and on the penultimate layer's; the distance to the 10th nearest
training image (Sun et al. 2022); and a source detector (logistic regression on the flag's
features: how sure it is of which training source an image comes from). Each gets a threshold on
the validation images (so that ``FLAG_SHARE`` of them, the shipped operating point, are flagged),
and on the held-out source the table gives: the share flagged, the share of the model's mistakes
flagged, accuracy on the images answered, and the area under the risk-coverage curve (error rate
against the share answered; lower is better)::

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
from harness import model_folds
from refit_familiarity import part  # a part of a run's split, read and prepared as the model saw it

from covidxray.inference.familiarity import FLAG_SHARE  # each rule flags this share of the validation images


def score_fold(fold: Path, out: Path) -> dict[str, np.ndarray]:
    """Per image of a fold's training, validation and test images: source, target, calibrated
    probabilities, decided class, the familiarity distance and the run's own flag, the features the
    flag reads (:func:`~covidxray.inference.familiarity.feature_model`) and the penultimate ones (the
    input of the model's last layer). Cached in ``out`` as ``scores-fold-N.npz``."""
    cached = out / f"scores-{fold.name}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as stored:
            return dict(stored)
    import keras

    from covidxray.inference.engines import predict_arrays
    from covidxray.inference.familiarity import model_features
    from covidxray.inference.predictor import load_predictor

    predictor = load_predictor(fold)
    penultimate = keras.Model(predictor.model.inputs, predictor.model.layers[-1].input)
    split = pd.read_csv(fold / "split.csv", dtype=str, keep_default_na=False)
    parts = {}
    for name in ("train", "validation", "test"):
        with tempfile.TemporaryDirectory() as scratch:
            prepared, targets, table = part(predictor, split, name, Path.cwd(), Path(scratch))
        probabilities, predicted = predictor.predict(prepared)
        features = model_features(predictor.model, prepared, features=predictor.feature_model)
        parts[name] = {"split": np.full(len(targets), name), "source": table["source"].to_numpy(dtype=str),
                       "target": targets, "predicted": predicted, "probabilities": probabilities,
                       "distance": predictor.familiarity.distances(features),
                       "flagged": predictor.familiarity.unlike(features, probabilities), "features": features,
                       "penultimate": predict_arrays(penultimate, prepared).reshape(len(prepared), -1)}
    scores = {key: np.concatenate([p[key] for p in parts.values()]) for key in parts["train"]}
    np.savez_compressed(cached, **scores)
    return scores


def _mahalanobis(train: np.ndarray, features: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """Mahalanobis distance of each row of ``features`` to the ``train`` rows (Ledoit-Wolf covariance);
    with the training rows' ``classes``, to the nearest class mean under their shared covariance
    (Lee et al. 2018)."""
    from sklearn.covariance import LedoitWolf

    if classes is None:
        means, centred = train.mean(axis=0, keepdims=True), train
    else:
        labels, index = np.unique(classes, return_inverse=True)
        means = np.stack([train[index == i].mean(axis=0) for i in range(len(labels))])
        centred = train - means[index]
    precision = LedoitWolf().fit(centred).precision_
    squared = np.stack([np.einsum("ij,jk,ik->i", features - m, precision, features - m) for m in means], axis=1)
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


def _nearest(train: np.ndarray, features: np.ndarray, k: int = 10) -> np.ndarray:
    """One less the cosine similarity of each row of ``features`` to its ``k``-th nearest ``train`` row
    (Sun et al. 2022)."""
    unit = train / (np.linalg.norm(train, axis=1, keepdims=True) + 1e-12)
    rows = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)
    return np.concatenate([1 - np.sort(rows[s:s + 1024] @ unit.T, axis=1)[:, -k] for s in range(0, len(rows), 1024)])


def doubt_scores(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Candidate doubt scores per image (higher: more doubtful), fitted on the training images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, validation = scores["split"] == "train", scores["split"] == "validation"
    top = np.sort(scores["probabilities"], axis=1)
    distance = scores["distance"]
    low_confidence = 1 - top[:, -1]
    margin = -(top[:, -1] - top[:, -2])
    # Each score over its own validation quantile at the operating point: the larger ratio decides.
    both = np.maximum(distance / np.quantile(distance[validation], 1 - FLAG_SHARE / 2),
                      low_confidence / np.quantile(low_confidence[validation], 1 - FLAG_SHARE / 2))
    features = StandardScaler().fit(scores["features"][train]).transform(scores["features"])
    penultimate = scores["penultimate"]
    doubts = {"familiarity distance": distance, "1 - top probability": low_confidence, "-margin (top two)": margin,
              "distance or low probability": both,
              "distance to the nearest class": _mahalanobis(features[train], features, scores["target"][train]),
              "penultimate: distance": _mahalanobis(penultimate[train], penultimate),
              "penultimate: distance to the nearest class": _mahalanobis(penultimate[train], penultimate,
                                                                         scores["target"][train]),
              "penultimate: 10th nearest training image": _nearest(penultimate[train], penultimate),
              "10th nearest training image": _nearest(features[train], features)}
    sources = scores["source"]
    if len(set(sources[train])) > 1:  # a source detector on the flag's features
        detector = LogisticRegression(C=0.1, max_iter=2000).fit(features[train], sources[train])
        doubts["source detector: 1 - top probability"] = 1 - detector.predict_proba(features).max(axis=1)
    return doubts


def measure(scores: dict[str, np.ndarray], fold: str) -> list[dict]:
    from covidxray.evaluation.metrics import risk_coverage

    validation, test = scores["split"] == "validation", scores["split"] == "test"
    correct = scores["target"] == scores["predicted"]
    held_out = ", ".join(sorted(set(scores["source"][test])))

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
    return rows + [row("the run's own flag (its familiarity.npz)", scores["flagged"].astype(bool))]


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
    for fold in model_folds(args.cv_run):
        if (fold / "metrics.json").is_file():
            rows += measure(score_fold(fold, args.out), fold.name)
    (args.out / "abstention.json").write_text(json.dumps(rows, indent=1))
    (args.out / "abstention.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
