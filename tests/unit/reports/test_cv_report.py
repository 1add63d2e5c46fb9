"""covidxray.reports.cv_report: cv.md from cv.json's content."""

from __future__ import annotations

from covidxray.reports.cv_report import CV_MATRIX, protocol_name, render_cv_report

FOLD = {"images": 10, "loss": 0.5, "sensitivity": 0.8, "specificity": 0.9, "best_epoch": 3}


def _result(group_by="patient", covid=True):
    pooled = {"n": 20, "accuracy": 0.75, "intervals": {"accuracy": [0.55, 0.9]}}
    if covid:
        pooled["covid"] = {"sensitivity": 0.8, "specificity": 0.7, "auc": 0.85, "tp": 4, "fn": 1, "tn": 7, "fp": 3}
    return {
        "protocol": {"folds": 2, "group_by": group_by, "seed": 7, "images": 20, "patients": 10},
        "config": {"data": ["a", "b"], "model": "compactnet", "task": "binary", "image_size": 32, "epochs": 4,
                   "val_fraction": 0.15, "learning_rate": 0.001, "batch_size": 8},
        "per_fold": [{**FOLD, "fold": 1, "accuracy": 0.7, "auc": 0.8}, {**FOLD, "fold": 2, "accuracy": 0.8, "auc": None}],
        "mean": {"accuracy": 0.75, "loss": 0.5, "sensitivity": 0.8, "specificity": 0.9, "auc": 0.8},
        "sd": {"accuracy": 0.0707, "loss": 0.0, "sensitivity": 0.0, "specificity": 0.0, "auc": 0.0},
        "pooled": pooled,
        "confounding": None,
    }


def test_protocol_names():
    assert protocol_name("patient") == "patient-grouped" and protocol_name("none") == "image-level"


def test_cv_report_has_folds_mean_and_pooled():
    report = render_cv_report(_result())
    assert report.startswith("# covidxray cross-validation: compactnet on binary")
    assert "never use it for diagnosis" in report
    assert "- protocol: 2-fold, patient-grouped (no patient in two folds), stratified by label; seed 7" in report
    assert "- data: `a, b`: 20 images of 10 patients" in report
    assert "| 1 | 10 | 70.0% | 0.500 | 80.0% | 90.0% | 0.800 | 3 |" in report
    assert "| 2 | 10 | 80.0% | 0.500 | 80.0% | 90.0% | n/a | 3 |" in report
    assert "| **mean ± sd** | | **75.0 ± 7.1%** | 0.500 ± 0.000 |" in report
    assert "- accuracy: **75.0%** [55.0-90.0] (20 images)" in report
    assert "| 80.0% (4/5) | 70.0% (7/10) | 0.850 |" in report
    assert f"![pooled confusion matrix]({CV_MATRIX})" in report
    assert "- training: Adam, cosine learning rate peaking at 0.001, batch 8, class-weighted loss, float32\n" in report


def test_a_recipe_and_its_schedule_are_named():
    result = _result(group_by="none")
    result["config"].update(recipe="darkcovidnet-paper", lr_schedule="one-cycle", weight_decay=0.01,
                            learning_rate=0.003, batch_size=32, class_weights=False, mixed_precision="mixed_bfloat16")
    assert ("- training: recipe `darkcovidnet-paper`: Adam, weight decay 0.01, one-cycle learning rate peaking at "
            "0.003, batch 32, unweighted loss, mixed_bfloat16\n") in render_cv_report(result)  # an older cv.json


def test_a_new_cv_json_names_the_schedules_weight_decay_and_the_runtimes_precision():
    from covidxray.config import Runtime, TrainConfig

    result = _result()
    config = TrainConfig(data="a", lr_schedule="one-cycle", learning_rate=0.003, batch_size=32).resolve()
    result["config"] = {**config.to_dict(), "runtime": Runtime(mixed_precision="mixed_bfloat16").record()}
    assert ("- training: Adam, weight decay 0.01, one-cycle learning rate peaking at 0.003, batch 32, class-weighted "
            "loss, mixed_bfloat16\n") in render_cv_report(result)


def test_the_settings_for_other_sources_are_named():
    result = _result()
    result["config"].update(lungs="crop", balance_sources=True, source_adversary=0.3)
    assert ("batch 8, class-weighted loss, float32; for other sources: lung crop, source-balanced loss, "
            "source adversary 0.3\n") in render_cv_report(result)


def test_image_level_protocol_and_no_covid():
    report = render_cv_report(_result(group_by="none", covid=False))
    assert "image-level (--group-by none" in report and "COVID sensitivity | specificity | ROC AUC |\n" not in report


def test_cv_html_shows_paths_and_sources_as_text(tmp_path):
    import html
    import re

    from covidxray.reports.html import render_html

    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    result = _result(covid=False)
    result["config"]["data"] = [f"data/{hostile}", "b`|`*c*"]
    result["pooled"]["per_source"] = {hostile: {"n": 10, "accuracy": 0.7}, "x|y": {"n": 10, "accuracy": 0.8}}
    result["confounding"] = f"every covid image comes from {hostile}"
    page = render_html(render_cv_report(result), tmp_path)
    assert "<img src=x" not in page and not re.search(r"<[^>]*onerror", page)
    assert [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", page)][0] == f"data/{hostile}, b`|`*c*"
    cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", page)]
    assert hostile in cells and "x|y" in cells


def test_leave_one_source_out_names_the_protocol_and_what_each_source_allows():
    result = _result(group_by="source")
    result["protocol"]["held_out_sources"] = ["hospital-a", "hospital-b"]
    result["per_fold"] = [
        {**FOLD, "fold": 1, "accuracy": 0.7, "auc": 0.812, "held_out": "hospital-a", "measure": "auc", "share_unlike": 0.25,
         "intervals": {"accuracy": [0.6, 0.8], "auc": [0.7, 0.9]}},
        {**FOLD, "fold": 2, "accuracy": 0.8, "auc": None, "specificity": None, "held_out": "hospital-b",
         "measure": "sensitivity", "intervals": {"accuracy": [0.5, 0.95], "sensitivity": [0.55, 0.95]}},
    ]
    report = render_cv_report(result)
    assert "- protocol: 2-fold, leave-one-source-out (--group-by source): each fold trains on every source but one" in report
    assert "stratified by label" not in report
    assert "| hospital-a | 10 | COVID AUC | **0.812 [0.700-0.900]** | 70.0% [60.0-80.0] | 25.0% |" in report
    assert ("| hospital-b | 10 | COVID sensitivity (COVID images only) | **80.0% [55.0-95.0]** | 80.0% [50.0-95.0] "
            "| n/a |") in report
    assert protocol_name("source") == "source-held-out"


def test_held_out_sources_get_their_risk_coverage_rows():
    result = _result(group_by="source")
    result["protocol"]["held_out_sources"] = ["hospital-a", "hospital-b"]
    curve = {"aurc": 0.2, "aurc_best": 0.05, "points": [[1.0, 0.3], [0.9, 0.25], [0.8, 0.2], [0.7, 0.15], [0.5, 0.1]]}
    result["per_fold"] = [
        {**FOLD, "fold": 1, "accuracy": 0.7, "auc": 0.8, "held_out": "hospital-a", "measure": "auc", "risk_coverage": curve},
        {**FOLD, "fold": 2, "accuracy": 0.8, "auc": None, "held_out": "hospital-b", "measure": "specificity",
         "risk_coverage": {**curve, "aurc": 0.1}},
    ]
    report = render_cv_report(result)
    assert ("| held-out source: error rate | 100.0% answered | 90.0% answered | 80.0% answered | 70.0% answered "
            "| 50.0% answered | AURC (best possible) |") in report
    assert "| hospital-a | 30.0% | 25.0% | 20.0% | 15.0% | 10.0% | 0.200 (0.050) |" in report
    assert "| hospital-b | 30.0% | 25.0% | 20.0% | 15.0% | 10.0% | 0.100 (0.050) |" in report
