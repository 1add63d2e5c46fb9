"""The run's report: figures saved beside ``report.md``, which shows every table and figure, and
``report.html``, the same as one self-contained page."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray import rundir
from covidxray.errors import CovidXrayError
from covidxray.evaluation.attention import heat_text
from covidxray.evaluation.scoring import ScoredPredictions
from covidxray.inference.lungs import OK
from covidxray.inference.preprocess import Preprocessing
from covidxray.labels import COVID
from covidxray.reports.markdown import (
    DISCLAIMER,
    code_md,
    covid_row,
    escape_md,
    interval_text,
    percent,
    risk_coverage_table,
    save_figure,
    source_section,
    source_settings_text,
    write_report,
)
from covidxray.reports.plots import (
    examples_title,
    pick_examples,
    plot_confusion,
    plot_history,
    plot_predictions,
    plot_reliability,
)

log = logging.getLogger(__name__)


def with_heatmaps(model, images: np.ndarray, predicted: np.ndarray) -> np.ndarray | None:
    """Grad-CAM maps ``(n, H, W)`` of the images for their predicted class; None if the model has no
    convolutional layer (``pred.png`` then shows the plain images)."""
    from covidxray.inference.heatmaps import grad_cam

    try:
        return grad_cam(model, images, predicted)
    except CovidXrayError as error:
        log.warning("pred.png without heatmaps: %s", error)
        return None


def write_figures_and_report(run: rundir.RunDir, config, x_test, test: ScoredPredictions, metrics: dict,
                             model=None, lungs: np.ndarray | None = None, lung_quality=None) -> None:
    """Draw ``acc.png``, ``mat.png``, ``pred.png`` and ``calibration.png`` and write ``report.md`` and
    ``report.html``. ``x_test``: the test images, row for row with ``test``'s predictions.

    With ``model``, ``pred.png`` shows Grad-CAM overlays of the example images, with the outline of
    their lungs (``lungs``: the test images' masks; ``lung_quality``: their flags, only ``ok`` drawn)."""
    history = pd.read_csv(run.file(rundir.HISTORY))
    save_figure(plot_history(history), run.file(rundir.ACC_FIGURE))
    save_figure(plot_confusion(metrics["test"]["confusion_matrix"], config.classes), run.file(rundir.MATRIX_FIGURE))
    shown = pick_examples(test.targets, test.predicted, seed=config.seed)
    outlines = None
    if lungs is not None:
        outlines = np.stack([lungs[i] if lung_quality is None or lung_quality[i] == OK else np.zeros_like(lungs[i])
                             for i in shown]) if len(shown) else None
    maps = None if model is None else with_heatmaps(model, x_test[shown], test.predicted[shown])
    title = examples_title(test.targets, test.predicted, shown, config.seed, heatmaps=maps is not None,
                           lungs=outlines is not None and bool(np.any(outlines)))
    save_figure(plot_predictions(x_test[shown], test.targets[shown], test.probabilities[shown], config.classes,
                                 predicted=test.predicted[shown], heatmaps=maps, outlines=outlines, title=title),
                run.file(rundir.PREDICTIONS_FIGURE))
    kept = "kept" if temperature_kept(metrics["calibration"]) else "not kept"
    save_figure(plot_reliability(metrics["calibration"]["test"], f"test reliability (temperature scaling {kept})"),
                run.file(rundir.RELIABILITY_FIGURE))
    write_report(run.file(rundir.REPORT), render_report(config, metrics))


def kept_epoch_text(info: dict, validated: bool) -> str:
    """Which epoch's model the run kept: the best on validation, or the last (no validation split)."""
    if validated:
        return f"best validation accuracy at epoch {info['best_epoch']} of {info['epochs_run']}"
    return f"the last epoch's model kept ({info['epochs_run']} run; no validation split)"


def temperature_kept(calibration: dict) -> bool:
    """Whether the run applies its fitted temperature (``metrics.json``'s ``calibration``; runs from
    before the rule kept every fitted temperature)."""
    return "validation" in calibration and calibration.get("temperature_kept", True)


def calibration_section(calibration: dict) -> list[str]:
    """The temperature fitted, whether it was kept and why, and the ECE and loss before and after on
    validation and test."""
    if "validation" in calibration:  # what the temperature was fitted on
        fitted = calibration.get("fitted_temperature", calibration["temperature"])
        validation = calibration["validation"]
        change = (validation["loss_before"] - validation["loss_after"]) / validation["loss_before"] \
            if validation["loss_before"] > 0 else 0.0
        margin = calibration.get("keep_margin")
        rule = f" (kept only where it lowers it by at least {percent(margin)})" if margin is not None else ""
        verdict = ("**Kept**: every table and `predict`, `evaluate` and `serve` use the temperature-scaled probabilities."
                   if temperature_kept(calibration) else
                   "**Not kept**: every table and `predict`, `evaluate` and `serve` use the model's own probabilities (T = 1).")
        text = (f"Temperature scaling fitted on the validation split: T = {fitted:.3f} "
                f"({'over' if fitted > 1 else 'under'}-confident model); it lowered the validation loss by "
                f"{percent(change)}{rule}. {verdict}")
    else:
        text = "No validation split to fit temperature scaling on: the model's own probabilities (T = 1)."
    lines = ["", "## Calibration", "",
             f"{text} Expected calibration error (15 bins) and loss of the model's own probabilities (before) "
             "and the temperature-scaled ones (after):", "",
             "| split | ECE before | ECE after | loss before | loss after |", "|---|---:|---:|---:|---:|"]
    for split in [s for s in ("validation", "test") if s in calibration]:
        part = calibration[split]
        lines.append(f"| {split} | {percent(part['ece_before'])} | {percent(part['ece_after'])} "
                     f"| {part['loss_before']:.3f} | {part['loss_after']:.3f} |")
    test = calibration.get("test")
    if temperature_kept(calibration) and test and (test["ece_after"] > test["ece_before"]
                                                   or test["loss_after"] > test["loss_before"]):
        lines += ["", "On the test split the kept scaling made calibration **worse**: a temperature fitted on one "
                  "small validation split is itself uncertain (docs/evaluation.md). The model's own probabilities "
                  "are the 'before' column."]
    if calibration.get("covid_threshold") is not None:
        lines += ["", f"COVID is called when its calibrated probability reaches **{calibration['covid_threshold']:.3f}**, "
                  f"chosen on the validation split for a sensitivity of {percent(calibration['target_sensitivity'])}; "
                  "otherwise the likelier other class. Every table above uses this rule."]
    lines += ["", f"![reliability diagram]({rundir.RELIABILITY_FIGURE})"]
    return lines


def render_report(config, metrics: dict) -> str:
    """``report.md``: settings, results with intervals, per-class, COVID and per-source scores,
    calibration and figures."""
    info = metrics["run"]
    test = metrics["test"]
    validated = "validation" in metrics  # not with --val-fraction 0
    missing, total = info["images_without_patient_id"], sum(info["images"].values())
    if info.get("group_by") == "none":
        grouping = "image-level (--group-by none: one patient's images may be in two splits, which inflates accuracy)"
    elif missing == 0:
        grouping = "patient-grouped (no patient in two splits)"
    elif missing == total:
        grouping = "image-level (no patient ids: one patient's images may be in two splits)"
    else:
        grouping = (f"partly patient-grouped ({missing} of {total} images have no patient id and are "
                    "split one by one, so those patients' images may be in two splits)")
    lines = [
        f"# covidxray run: {escape_md(config.model)} on {escape_md(config.task)}",
        "",
        DISCLAIMER,
        "",
        "## Setup",
        "",
        f"- data: {', '.join(code_md(d) for d in ([config.data] if isinstance(config.data, str) else config.data))}; "
        f"classes: {', '.join(escape_md(c) for c in config.classes)}",
        f"- split: {grouping}, stratified by label; identical images kept in one split; seed {config.seed}",
        "- images: " + ", ".join(f"{escape_md(k)} {v}" for k, v in info["images"].items()),
        f"- model: {code_md(config.model)} at {config.image_size}x{config.image_size}, {info['parameters']:,} parameters, "
        f"Keras backend {code_md(info['backend'])}, computing in {code_md(info.get('mixed_precision', 'float32'))}",
        f"- training: up to {config.epochs} epochs, {kept_epoch_text(info, validated)}, "
        f"{info['fit_seconds']} s ({info['train_images_per_second']} images/s); decoding and segmenting the lungs {info['data_seconds']} s",
    ]
    sources = source_settings_text(config.to_dict())
    if sources:
        lines.append(f"- for other sources: {sources}")
    if "environment" in info:
        lines.append(f"- environment: {environment_text(info['environment'])}")
    if info["skipped"]:
        lines.append(f"- left out {len(info['skipped'])} file(s) (unreadable, a copy counted once, a label conflict): "
                     + "; ".join(code_md(m) for m in list(info["skipped"].values())[:5]))
    lines += preprocessing_lines(info)
    lines += ["", "## Results", "",
              "Accuracy with its 95% interval (bootstrap over patients, 1000 resamples); probabilities are "
              + ("temperature-scaled" if temperature_kept(metrics.get("calibration", {})) else "the model's own")
              + " (see Calibration).", "",
              "| split | images | accuracy [95% CI] | loss |", "|---|---:|---:|---:|"]
    for split in [s for s in rundir.SPLIT_NAMES if s in metrics]:
        part = metrics[split]
        lines.append(f"| {split} | {part['n']} | {percent(part['accuracy'])}{interval_text(part, 'accuracy')} | {part['loss']:.3f} |")
    lines += ["", "### Per class (test)", "", "| class | precision | recall | F1 | images |", "|---|---:|---:|---:|---:|"]
    for name, scores in test["per_class"].items():
        lines.append(f"| {escape_md(name)} | {percent(scores['precision'])} | {percent(scores['recall'])} | {percent(scores['f1'])} | {scores['support']} |")
    if COVID in test:
        lines += ["", "### COVID-19 vs the rest (test, 95% CI)", "",
                  "| sensitivity | specificity | ROC AUC |", "|---:|---:|---:|", f"| {covid_row(test)} |"]
    lines += source_section(test, info.get("confounding"))
    if "calibration" in metrics:
        lines += calibration_section(metrics["calibration"])
    if "heat_in_lungs" in metrics:
        lines += heat_section(metrics["heat_in_lungs"])
    if test.get("risk_coverage"):
        lines += ["", "## Answering only the surest", "",
                  "Leaving the least sure test images unanswered (one less the top probability), the "
                  "error rate among those answered; AURC is its mean over every share (lower is better).", "",
                  *risk_coverage_table({"test: error rate": test["risk_coverage"]})]
    if metrics.get("unlike_training"):
        lines += unlike_section(metrics["unlike_training"])
    if "probe" in metrics and "summary" in metrics["probe"]:
        lines += ["", "## Shortcut probe", "", escape_md(metrics["probe"]["summary"])]
    lines += ["", "## Figures", "",
              ("Training and validation" if validated else "Training") + " accuracy and loss per epoch:",
              "", f"![accuracy and loss]({rundir.ACC_FIGURE})", "",
              "Test confusion matrix:", "", f"![confusion matrix]({rundir.MATRIX_FIGURE})", "",
              "Test predictions: mistakes first (in red, up to half the grid), then a random sample per class, "
              "coloured by Grad-CAM where the predicted class's score is most "
              "sensitive to the last convolutional features (a hint for inspection, not proof of what the model uses); "
              "the white line is the outline of the segmented lungs:",
              "", f"![predictions]({rundir.PREDICTIONS_FIGURE})", ""]
    return "\n".join(lines)


def preprocessing_lines(info: dict) -> list[str]:
    """Setup lines on what the model saw: the lungs, what a probe blanked, fallbacks."""
    lines = []
    prep = Preprocessing.from_settings(info, where=f"{rundir.METRICS} (run)")
    if prep.segments:
        lines.append(f"- **lungs**: every image {prep.describe()} (--lungs {prep.lungs}), by the lung segmenter")
        fallback = info.get("lung_fallback") or {}
        if fallback:
            names = ", ".join(code_md(Path(p).name) for p in list(fallback)[:10])
            more = f" and {len(fallback) - 10} more (metrics.json, run.lung_fallback)" if len(fallback) > 10 else ""
            lines.append(f"- lungs not found reliably in {len(fallback)} image(s), used whole: {names}{more}")
        else:
            lines.append("- the lungs were found reliably in every image")
    blanking = info.get("blanking", "box" if info.get("blank_fraction") else None)
    if blanking == "box":
        lines.append(f"- **shortcut probe**: the central {100 * info['blank_fraction']:.0f}% x {100 * info['blank_fraction']:.0f}% "
                     "of every image (the lung field) was blanked out in training and testing")
    elif blanking == "lungs":
        lines.append("- **shortcut probe**: the segmented lungs of every image were blanked out in training and testing "
                     "(only the rest visible)")
    elif blanking == "outside-lungs":
        lines.append("- **shortcut probe**: everything outside the segmented lungs was blanked out in training and "
                     "testing (only the lungs visible)")
    return lines


def heat_section(heat: dict) -> list[str]:
    """Heat inside the lungs: overall, per class and per source, beside the lungs' share of the image."""
    lines = ["", "## Heat inside the lungs", "", escape_md(heat_text(heat)) + "."]
    if not heat.get("images"):
        return lines
    lines += ["", "| test images | heat inside the lungs | lungs' share of the input | images |", "|---|---:|---:|---:|",
              f"| all | {percent(heat['heat'])} | {percent(heat['lung_area'])} | {heat['images']} |"]
    for kind in ("per_class", "per_source"):
        for name, part in heat.get(kind, {}).items():
            label = f"class {name}" if kind == "per_class" else f"source {name}"
            lines.append(f"| {escape_md(label)} | {percent(part['heat'])} | {percent(part['lung_area'])} | {part['images']} |")
    return lines


def unlike_section(unlike: dict) -> list[str]:
    """How many test images the run's flag withholds an answer from, and the accuracy with and without them."""
    test = unlike["test"]
    if "min_probability" in unlike:
        text = (f"`predict`, `evaluate` and the web page give no answer for an X-ray that looks unlike this run's "
                f"training data (its distance on the model's features above {unlike['threshold']:.1f}, Mahalanobis) or "
                f"whose likeliest class is less probable than {percent(unlike['min_probability'])}: set so that "
                f"{percent(unlike['share'])} of the validation images are flagged.")
    else:  # a run trained before the probability floor
        text = (f"`predict`, `evaluate` and the web page flag an X-ray as unlike this run's training data when its "
                f"distance on the model's features exceeds {percent(unlike['quantile'])} of the validation images' "
                f"(Mahalanobis, {unlike['threshold']:.1f}).")
    text += f" On the test split it flags {test['unlike']} of {test['images']} images"
    if test.get("accuracy_unlike") is not None:
        text += f" (accuracy {percent(test['accuracy_unlike'])} on them, {percent(test['accuracy_unflagged'])} on the rest)"
    return ["", "## Unlike the training data, or unsure: no answer", "", text + "."]


def environment_text(environment: dict) -> str:
    """Python, the key package versions, the backend and the CPU, in one line."""
    packages = environment.get("packages", {})
    shown = ", ".join(f"{name} {version}" for name, version in packages.items() if name != "covidxray")
    return (escape_md(f"covidxray {packages.get('covidxray', '?')} on Python {environment.get('python')}, {shown}; ")
            + f"backend {code_md(environment.get('backend'))}; "
            + escape_md(f"CPU {environment.get('cpu')} ({environment.get('cpu_count')} cores), {environment.get('platform')}"))
