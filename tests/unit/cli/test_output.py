"""covidxray.cli.output: what the commands print."""

from __future__ import annotations

import csv
import io
import json

from covidxray.cli.output import format_predictions, print_cv_summary, print_evaluation, print_run_summary

CLASSES = ("covid", "normal")
RESULTS = [
    {"path": "a/x.png", "label": "covid", "probabilities": {"covid": 0.91234, "normal": 0.08766}},
    {"path": "long/name/y.png", "label": "normal", "probabilities": {"covid": 0.2, "normal": 0.8}},
]
COVID = {"sensitivity": 0.75, "specificity": None, "auc": 0.9}


def test_table_json_and_csv():
    table = format_predictions(RESULTS, CLASSES, "table").splitlines()
    assert table == ["path             label   p_covid  p_normal",
                     "a/x.png          covid   0.9123   0.0877",
                     "long/name/y.png  normal  0.2000   0.8000"]
    assert json.loads(format_predictions(RESULTS, CLASSES, "json")) == RESULTS
    rows = list(csv.reader(io.StringIO(format_predictions(RESULTS, CLASSES, "csv"))))
    assert rows == [["path", "label", "p_covid", "p_normal"], ["a/x.png", "covid", "0.9123", "0.0877"],
                    ["long/name/y.png", "normal", "0.2000", "0.8000"]]


def test_heatmap_column_only_when_written():
    with_maps = [{**RESULTS[0], "heatmap": "maps/x_gradcam.png"}, RESULTS[1]]
    rows = list(csv.DictReader(io.StringIO(format_predictions(with_maps, CLASSES, "csv"))))
    assert [r["heatmap"] for r in rows] == ["maps/x_gradcam.png", ""]
    assert "heatmap" not in format_predictions(RESULTS, CLASSES, "table")


def test_run_summary(capsys):
    part = {"accuracy": 0.8, "loss": 0.5, "n": 10, "intervals": {"accuracy": [0.6, 0.95]}}
    print_run_summary({"train": part, "validation": {**part, "intervals": {}}, "test": {**part, "covid": COVID},
                       "run": {"confounding": "every covid image comes from a."}})
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "     train: accuracy 0.8000 [95% CI 0.600-0.950]  loss 0.5000  (10 images)",
        "validation: accuracy 0.8000  loss 0.5000  (10 images)",
        "      test: accuracy 0.8000 [95% CI 0.600-0.950]  loss 0.5000  (10 images)",
        "     covid: sensitivity 0.7500  specificity n/a  AUC 0.9000"]
    assert err == "warning: every covid image comes from a.\n"
    print_run_summary({"train": part, "test": part, "run": {}})  # --val-fraction 0: no validation split
    assert capsys.readouterr().out.splitlines() == [
        "     train: accuracy 0.8000 [95% CI 0.600-0.950]  loss 0.5000  (10 images)",
        "      test: accuracy 0.8000 [95% CI 0.600-0.950]  loss 0.5000  (10 images)"]


def test_evaluation_and_cv_summary(capsys):
    print_evaluation({"accuracy": 0.5, "loss": 1.0, "n": 4, "covid": COVID,
                      "per_source": {"a": {"accuracy": 1.0, "n": 2}, "b": {"accuracy": 0.0, "n": 2}}, "confounding": None})
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "accuracy 0.5000  loss 1.0000  (4 images)  covid sensitivity 0.7500 specificity n/a AUC 0.9000",
        "  a: accuracy 1.0000 (2 images)", "  b: accuracy 0.0000 (2 images)"]
    assert err == ""
    print_cv_summary({"per_fold": [{"fold": 1, "accuracy": 0.7, "loss": 0.6, "images": 5}],
                      "mean": {"accuracy": 0.7}, "sd": {"accuracy": 0.0},
                      "pooled": {"accuracy": 0.7, "intervals": {"accuracy": [0.4, 0.9]}},
                      "protocol": {"group_by": "none", "folds": 1}})
    assert capsys.readouterr().out.splitlines() == [
        "fold 1: accuracy 0.7000  loss 0.6000  (5 images)",
        "mean accuracy 0.7000 +- 0.0000; pooled 0.7000 [95% CI 0.400-0.900] (image-level, 1 folds)"]
