"""``cv.md``: the cross-validation report (protocol, per-fold table, mean +- sd, pooled metrics)."""

from __future__ import annotations

from covidxray.reports.markdown import DISCLAIMER, code_md, covid_row, escape_md, interval_text, percent, source_section

CV_MATRIX = "cv_mat.png"


def protocol_name(group_by: str) -> str:
    """The protocol in two words, as the README names it."""
    return "patient-grouped" if group_by == "patient" else "image-level"


def training_text(config: dict) -> str:
    """The recipe, schedule and optimiser of a run's config, in one line."""
    recipe = f"recipe {code_md(config['recipe'])}: " if config.get("recipe") else ""
    decay = f", weight decay {config['weight_decay']:g}" if config.get("weight_decay") else ""
    weights = "class-weighted loss" if config.get("class_weights", True) else "unweighted loss"
    return (f"{recipe}Adam{decay}, {config.get('lr_schedule', 'cosine')} learning rate peaking at "
            f"{config['learning_rate']:g}, batch {config['batch_size']}, {weights}")


def render_cv_report(result: dict) -> str:
    """``cv.md``: the protocol, per-fold table, mean +- sd and pooled metrics with intervals."""
    protocol, config, pooled = result["protocol"], result["config"], result["pooled"]
    level = ("patient-grouped (no patient in two folds)" if protocol["group_by"] == "patient"
             else "image-level (--group-by none: one patient's images may be in two folds, which inflates accuracy)")
    data = code_md(config["data"] if isinstance(config["data"], str) else ", ".join(config["data"]))
    lines = [f"# covidxray cross-validation: {escape_md(config['model'])} on {escape_md(config['task'])}", "", DISCLAIMER, "",
             f"- protocol: {protocol['folds']}-fold, {level}, stratified by label; seed {protocol['seed']}",
             f"- data: {data}: {protocol['images']} images of {protocol['patients']} patients",
             f"- model: {code_md(config['model'])} at {config['image_size']} px, up to {config['epochs']} epochs; each fold draws "
             f"a validation split ({percent(config['val_fraction'])}) from its training folds",
             f"- training: {training_text(config)}", "",
             "| fold | test images | accuracy | loss | COVID sensitivity | specificity | AUC | best epoch |",
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
    lines += ["", "## Pooled out-of-fold (every image tested once; 95% CI by bootstrap over patients)", "",
              f"- accuracy: **{percent(pooled['accuracy'])}**{interval_text(pooled, 'accuracy')} ({pooled['n']} images)"]
    if "covid" in pooled:
        lines += ["", "| COVID sensitivity | specificity | ROC AUC |", "|---:|---:|---:|", f"| {covid_row(pooled)} |"]
    lines += source_section(pooled, result.get("confounding"), heading="### Per source (pooled out-of-fold)")
    lines += ["", f"![pooled confusion matrix]({CV_MATRIX})", ""]
    return "\n".join(lines)
