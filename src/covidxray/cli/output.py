"""What the commands print: run and cross-validation summaries, evaluation lines, prediction tables."""

from __future__ import annotations

import csv
import io
import json
import sys

from covidxray import rundir
from covidxray.errors import printable
from covidxray.labels import probability_columns


def print_run_summary(metrics: dict) -> None:
    for split in [s for s in rundir.SPLIT_NAMES if s in metrics]:  # no validation: --val-fraction 0
        part = metrics[split]
        low, high = part.get("intervals", {}).get("accuracy", (None, None))
        ci = f" [95% CI {low:.3f}-{high:.3f}]" if low is not None else ""
        print(f"{split:>10}: accuracy {part['accuracy']:.4f}{ci}  loss {part['loss']:.4f}  ({part['n']} images)")
    covid = metrics["test"].get("covid")
    if covid:
        print(f"{'covid':>10}: sensitivity {_fmt(covid['sensitivity'])}  specificity {_fmt(covid['specificity'])}  AUC {_fmt(covid['auc'])}")
    curve = metrics.get("risk_coverage") or {}
    if curve.get("points"):
        print("error rate answering the surest " + ", ".join(f"{100 * c:.0f}%: {100 * r:.1f}%" for c, r in curve["points"])
              + f" (AURC {curve['aurc']:.3f})")
    if "heat_in_lungs" in metrics:
        from covidxray.evaluation.attention import heat_text

        print(f"{'lungs':>10}: {heat_text(metrics['heat_in_lungs'])}")
    fallback = metrics["run"].get("lung_fallback") or {}
    if fallback:
        print(f"{'lungs':>10}: not found reliably in {len(fallback)} image(s), used whole (report.md names them)")
    if metrics["run"].get("confounding"):
        print(f"warning: {metrics['run']['confounding']}", file=sys.stderr)


def print_cv_summary(result: dict) -> None:
    from covidxray.reports.cv_report import protocol_name

    for fold in result["per_fold"]:
        held_out = ""
        if "held_out" in fold:
            value = fold[fold["measure"]]
            held_out = f"  held out {fold['held_out']}: COVID {fold['measure']} {_fmt(value)}"
        print(f"fold {fold['fold']}: accuracy {fold['accuracy']:.4f}  loss {fold['loss']:.4f}  ({fold['images']} images)"
              + held_out)
    mean, sd, pooled = result["mean"], result["sd"], result["pooled"]
    low, high = pooled["intervals"]["accuracy"]
    print(f"mean accuracy {mean['accuracy']:.4f} +- {sd['accuracy']:.4f}; pooled {pooled['accuracy']:.4f} "
          f"[95% CI {low:.3f}-{high:.3f}] ({protocol_name(result['protocol']['group_by'])}, "
          f"{result['protocol']['folds']} folds)")


def print_evaluation(metrics: dict) -> None:
    covid = metrics.get("covid") or {}
    print(f"accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  ({metrics['n']} images)"
          + (f"  covid sensitivity {_fmt(covid['sensitivity'])} specificity {_fmt(covid['specificity'])} AUC {_fmt(covid['auc'])}" if covid else ""))
    for source, part in metrics.get("per_source", {}).items():
        print(f"  {source}: accuracy {part['accuracy']:.4f} ({part['n']} images)")
    curve = metrics.get("risk_coverage") or {}
    if curve.get("points"):
        print("error rate answering the surest " + ", ".join(f"{100 * c:.0f}%: {100 * r:.1f}%" for c, r in curve["points"])
              + f" (AURC {curve['aurc']:.3f})")
    if "heat_in_lungs" in metrics:
        from covidxray.evaluation.attention import heat_text

        print(f"lungs: {heat_text(metrics['heat_in_lungs'])}")
    if metrics.get("lung_fallback"):
        print(f"lungs not found reliably in {len(metrics['lung_fallback'])} image(s), used whole "
              "(metrics lung_fallback names them)")
    if metrics.get("confounding"):
        print(f"warning: {metrics['confounding']}", file=sys.stderr)


NO_ANSWER = "no answer"


def format_predictions(results: list[dict], classes, fmt: str) -> str:
    """Predictions as an aligned table, JSON list or CSV."""
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    # the table withholds the answer the flag withholds (json and csv keep the label, beside unlike_training)
    rows = [[printable(r["path"]), NO_ANSWER if fmt == "table" and r.get("unlike_training") else r["label"],
             *(f"{r['probabilities'][c]:.4f}" for c in classes)] for r in results]
    header = ["path", "label", *probability_columns(classes)]
    if any(r.get("near_tie") for r in results):  # the top two classes within NEAR_TIE: the model cannot tell
        header.append("near_tie")
        rows = [[*row, str(bool(r.get("near_tie")))] for row, r in zip(rows, results)]
    if any("seen_in_training" in r for r in results):
        header.append("seen_in_training")
        rows = [[*row, str(r.get("seen_in_training", ""))] for row, r in zip(rows, results)]
    if any("unlike_training" in r for r in results):
        header.append("unlike_training")
        rows = [[*row, "" if r.get("unlike_training") is None else str(r["unlike_training"])]  # None: not checked
                for row, r in zip(rows, results)]
    if any("lungs" in r for r in results):
        header.append("lungs")
        rows = [[*row, r.get("lungs", "")] for row, r in zip(rows, results)]
    if any("heatmap" in r for r in results):
        header.append("heatmap")
        rows = [[*row, printable(r.get("heatmap", ""))] for row, r in zip(rows, results)]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([header, *rows])
        return buffer.getvalue()
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() + "\n" for row in [header, *rows])


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
