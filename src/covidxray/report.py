"""The run's report: figures saved beside ``report.md``, which shows every table and figure, and
``report.html``, the same as one self-contained page."""

from __future__ import annotations

import pandas as pd

from covidxray import rundir
from covidxray.files import atomic_save, atomic_write_text
from covidxray.htmlreport import write_html
from covidxray.labels import COVID
from covidxray.plots import pick_examples, plot_confusion, plot_history, plot_predictions

DISCLAIMER = (
    "> **For research and teaching only. Not a medical device; never use it for diagnosis.** "
    "Accuracy on one dataset says little about other hospitals, and where each class comes from "
    "its own source (as in the DarkCovidNet data) a model can learn the source instead of the disease."
)


def save_figure(figure, path) -> None:
    atomic_save(path, lambda tmp: figure.savefig(tmp, dpi=110))


def write_figures_and_report(run: rundir.RunDir, config, data, metrics: dict, test_probabilities) -> None:
    """Draw ``acc.png``, ``mat.png`` and ``pred.png`` and write ``report.md`` and ``report.html``."""
    history = pd.read_csv(run.file(rundir.HISTORY))
    save_figure(plot_history(history), run.file(rundir.ACC_FIGURE))
    save_figure(plot_confusion(metrics["test"]["confusion_matrix"], config.classes), run.file(rundir.MATRIX_FIGURE))
    x_test, y_test = data.part("test")
    shown = pick_examples(y_test, test_probabilities, seed=config.seed)
    save_figure(plot_predictions(x_test[shown], y_test[shown], test_probabilities[shown], config.classes),
                run.file(rundir.PREDICTIONS_FIGURE))
    write_report(run.file(rundir.REPORT), render_report(config, metrics))


def write_report(path, text: str) -> None:
    """Write ``report.md`` and, beside it, ``report.html`` with every figure inlined."""
    atomic_write_text(path, text)
    write_html(path, text)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_report(config, metrics: dict) -> str:
    """``report.md``: settings, the results table, per-class scores, COVID scores and figures."""
    info = metrics["run"]
    test = metrics["test"]
    missing, total = info["images_without_patient_id"], sum(info["images"].values())
    if missing == 0:
        grouping = "patient-grouped (no patient in two splits)"
    elif missing == total:
        grouping = "image-level (no patient ids: one patient's images may be in two splits)"
    else:
        grouping = (f"partly patient-grouped ({missing} of {total} images have no patient id and are "
                    "split one by one, so those patients' images may be in two splits)")
    lines = [
        f"# covidxray run: {config.model} on {config.task}",
        "",
        DISCLAIMER,
        "",
        "## Setup",
        "",
        f"- data: `{config.data}`; classes: {', '.join(config.classes)}",
        f"- split: {grouping}, stratified by label; identical images kept in one split; seed {config.seed}",
        "- images: " + ", ".join(f"{k} {v}" for k, v in info["images"].items()),
        f"- model: `{config.model}` at {config.image_size}x{config.image_size}, {info['parameters']:,} parameters, "
        f"Keras backend `{info['backend']}`",
        f"- training: up to {config.epochs} epochs, best validation accuracy at epoch {info['best_epoch']} of {info['epochs_run']}, "
        f"{info['fit_seconds']} s ({info['train_images_per_second']} images/s); decoding {info['data_seconds']} s",
    ]
    if info["skipped"]:
        lines.append(f"- skipped {len(info['skipped'])} unreadable file(s): "
                     + "; ".join(f"`{m}`" for m in list(info["skipped"].values())[:5]))
    lines += ["", "## Results", "", "| split | images | accuracy | loss |", "|---|---:|---:|---:|"]
    for split in ("train", "validation", "test"):
        lines.append(f"| {split} | {metrics[split]['n']} | {_pct(metrics[split]['accuracy'])} | {metrics[split]['loss']:.3f} |")
    lines += ["", "### Per class (test)", "", "| class | precision | recall | F1 | images |", "|---|---:|---:|---:|---:|"]
    for name, scores in test["per_class"].items():
        lines.append(f"| {name} | {_pct(scores['precision'])} | {_pct(scores['recall'])} | {_pct(scores['f1'])} | {scores['support']} |")
    if COVID in test:
        covid = test[COVID]
        auc = "n/a" if covid["auc"] is None else f"{covid['auc']:.3f}"
        lines += ["", "### COVID-19 vs the rest (test)", "",
                  "| sensitivity | specificity | ROC AUC |", "|---:|---:|---:|",
                  f"| {_pct(covid['sensitivity'])} ({covid['tp']}/{covid['tp'] + covid['fn']}) "
                  f"| {_pct(covid['specificity'])} ({covid['tn']}/{covid['tn'] + covid['fp']}) | {auc} |"]
    lines += ["", "## Figures", "",
              "Training and validation accuracy and loss per epoch:", "", f"![accuracy and loss]({rundir.ACC_FIGURE})", "",
              "Test confusion matrix:", "", f"![confusion matrix]({rundir.MATRIX_FIGURE})", "",
              "Test predictions (mistakes in red):", "", f"![predictions]({rundir.PREDICTIONS_FIGURE})", ""]
    return "\n".join(lines)
