"""``cv.md``: the cross-validation report (protocol, per-fold table, mean +- sd, pooled metrics)."""

from __future__ import annotations

from covidxray.config import RUNTIME
from covidxray.reports import markdown
from covidxray.reports.markdown import (
    DISCLAIMER,
    code_md,
    covid_row,
    escape_md,
    interval_text,
    percent,
    risk_coverage_table,
    source_section,
)

CV_MATRIX = "cv_mat.png"


PROTOCOLS = {"patient": "patient-grouped", "none": "image-level", "source": "source-held-out"}
LEVELS = {
    "patient": "patient-grouped (no patient in two folds)",
    "none": "image-level (--group-by none: one patient's images may be in two folds, which inflates accuracy; copies "
            "of one image stay together)",
    "source": "leave-one-source-out (--group-by source): each fold trains on every source but one and tests on the "
              "one held out whole, so the model never saw its hospital, scanner or collection; validation is drawn "
              "by patient from the training sources",
}
MEASURES = {"auc": "COVID AUC", "sensitivity": "COVID sensitivity (COVID images only)",
            "specificity": "COVID specificity (no COVID images)"}


def protocol_name(group_by: str) -> str:
    """The protocol in two words, as the README names it."""
    return PROTOCOLS[group_by]


def training_text(config: dict) -> str:
    """The recipe (an older run's config names it), schedule, optimiser and precision of a run's config, in one line."""
    recipe = f"recipe {code_md(config['recipe'])}: " if config.get("recipe") else ""
    decay = f", weight decay {config['weight_decay']:g}" if config.get("weight_decay") else ""
    weights = "class-weighted loss" if config.get("class_weights", True) else "unweighted loss"
    sources = markdown.source_settings_text(config)
    return (f"{recipe}Adam{decay}, {config.get('lr_schedule', 'cosine')} learning rate peaking at "
            f"{config['learning_rate']:g}, batch {config['batch_size']}, {weights}, "
            f"{config.get(RUNTIME, config).get('mixed_precision') or 'float32'}" + (f"; for other sources: {sources}" if sources else ""))


def held_out_section(per_fold: list[dict]) -> list[str]:
    """Per held-out source: what its test allows (COVID AUC, or sensitivity, or specificity), with
    its 95% interval over patients, and the accuracy."""
    lines = ["", "## Per held-out source", "",
             "Each row is a model that never saw this source. A source with COVID and other images gives a COVID "
             "AUC; one with COVID only, the sensitivity; one without COVID, the specificity.", "",
             "| held-out source | test images | what it allows | value [95% CI] | accuracy [95% CI] | flagged unlike "
             "the training data |",
             "|---|---:|---|---:|---:|---:|"]
    for fold in per_fold:
        measure = fold["measure"]
        value = fold[measure]
        bounds = fold.get("intervals", {}).get(measure)
        if measure == "auc":
            shown = f"{value:.3f}" + (f" [{bounds[0]:.3f}-{bounds[1]:.3f}]" if bounds else "")
        else:
            shown = percent(value) + (f" [{100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}]" if bounds else "")
        accuracy = fold.get("intervals", {}).get("accuracy")
        lines.append(f"| {escape_md(fold['held_out'])} | {fold['images']} | {MEASURES[measure]} | **{shown}** | "
                     f"{percent(fold['accuracy'])}"
                     + (f" [{100 * accuracy[0]:.1f}-{100 * accuracy[1]:.1f}]" if accuracy else "")
                     + f" | {percent(fold.get('share_unlike'))} |")
    curves = {fold["held_out"]: fold.get("risk_coverage") for fold in per_fold}
    table = risk_coverage_table(curves, "held-out source: error rate")
    if table:
        lines += ["", "Answering only the surest images of each held-out source (the least sure, by one less the "
                  "top probability, left unanswered first), the error rate among those answered:", "", *table]
    return lines


def render_cv_report(result: dict) -> str:
    """``cv.md``: the protocol, per-fold table, mean +- sd and pooled metrics with intervals."""
    protocol, config, pooled = result["protocol"], result["config"], result["pooled"]
    level = LEVELS[protocol["group_by"]]
    data = code_md(config["data"] if isinstance(config["data"], str) else ", ".join(config["data"]))
    validated = bool(config["val_fraction"])
    lines = [f"# covidxray cross-validation: {escape_md(config['model'])} on {escape_md(config['task'])}", "", DISCLAIMER, "",
             f"- protocol: {protocol['folds']}-fold, {level}"
             + ("" if protocol["group_by"] == "source" else ", stratified by label") + f"; seed {protocol['seed']}",
             f"- data: {data}: {protocol['images']} images of {protocol['patients']} patients",
             f"- model: {code_md(config['model'])} at {config['image_size']} px, up to {config['epochs']} epochs; "
             + (f"each fold draws a validation split ({percent(config['val_fraction'])}) from its training folds"
                if validated else
                "no validation split: each fold trains on all its training folds and keeps its last epoch"),
             f"- training: {training_text(config)}", "",
             "| fold | test images | accuracy | loss | COVID sensitivity | specificity | AUC | "
             + ("best epoch" if validated else "last epoch") + " |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in result["per_fold"]:
        auc = "n/a" if f["auc"] is None else f"{f['auc']:.3f}"
        lines.append(f"| {f['fold']} | {f['images']} | {percent(f['accuracy'])} | {f['loss']:.3f} | {percent(f['sensitivity'])} "
                     f"| {percent(f['specificity'])} | {auc} | {f['best_epoch']} |")
    mean, sd = result["mean"], result["sd"]

    def pm(metric: str, percent: bool = True) -> str:
        if mean[metric] is None:
            return "n/a"
        return f"{100 * mean[metric]:.1f} ± {100 * sd[metric]:.1f}%" if percent else f"{mean[metric]:.3f} ± {sd[metric]:.3f}"

    lines.append(f"| **mean ± sd** | | **{pm('accuracy')}** | {pm('loss', False)} | {pm('sensitivity')} "
                 f"| {pm('specificity')} | {pm('auc', False)} | |")
    if protocol["group_by"] == "source":
        lines += held_out_section(result["per_fold"])
    lines += ["", "## Pooled out-of-fold (every image tested once; 95% CI by bootstrap over patients)", "",
              f"- accuracy: **{percent(pooled['accuracy'])}**{interval_text(pooled, 'accuracy')} ({pooled['n']} images)"]
    if "covid" in pooled:
        lines += ["", "| COVID sensitivity | specificity | ROC AUC |", "|---:|---:|---:|", f"| {covid_row(pooled)} |"]
    lines += source_section(pooled, result.get("confounding"), heading="### Per source (pooled out-of-fold)")
    lines += ["", f"![pooled confusion matrix]({CV_MATRIX})", ""]
    return "\n".join(lines)
