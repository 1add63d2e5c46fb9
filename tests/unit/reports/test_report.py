"""covidxray.reports.report: the run's figures, report.md and report.html from its metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidxray import rundir
from covidxray.config import TrainConfig
from covidxray.evaluation.calibration import calibration_summary
from covidxray.evaluation.metrics import classification_metrics
from covidxray.evaluation.scoring import ScoredPredictions
from covidxray.inference.decision import Calibration
from covidxray.reports.report import render_report, with_heatmaps, write_figures_and_report
from helpers import CLASSES, build_run, gray

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(scored: ScoredPredictions, calibration: Calibration, raw, **run) -> dict:
    groups = scored.table["patient_id"].to_numpy()
    part = classification_metrics(scored.targets, scored.probabilities, CLASSES, predictions=scored.predicted,
                                  groups=groups, bootstrap=50)
    summary = calibration_summary(scored.targets, raw, calibration)
    info = {"best_epoch": 2, "epochs_run": 3, "fit_seconds": 1.5, "train_images_per_second": 40.0, "data_seconds": 0.2,
            "parameters": 1234567, "backend": "tensorflow", "images": {"train": 8, "validation": 2, "test": 12},
            "images_without_patient_id": 0, "group_by": "patient", "blank_fraction": 0.0, "skipped": {},
            "confounding": None, **run}
    return {"train": part, "validation": part, "test": part, "run": info,
            "calibration": {**calibration.to_dict(), "validation": summary, "test": summary}}


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1, 2], 4)
    raw = rng.dirichlet(np.ones(3), 12)
    raw[np.arange(12), targets] += 1.0
    raw /= raw.sum(axis=1, keepdims=True)
    table = pd.DataFrame({"patient_id": [f"p{i // 2}" for i in range(12)], "source": "synthetic"})
    calibration = Calibration(temperature=1.5, covid_threshold=0.2, target_sensitivity=0.95)
    return ScoredPredictions.from_raw(targets, raw, table, CLASSES, calibration), calibration, raw


def test_write_figures_and_report(tmp_path, scored):
    test, calibration, raw = scored
    run = rundir.RunDir(tmp_path / "run")
    run.create()
    pd.DataFrame({"accuracy": [0.5, 0.7, 0.8], "loss": [1.0, 0.7, 0.5], "val_accuracy": [0.4, 0.6, 0.7],
                  "val_loss": [1.1, 0.8, 0.6]}).to_csv(run.file(rundir.HISTORY), index=False)
    config = TrainConfig(data="synthetic", image_size=32).resolve()
    metrics = _metrics(test, calibration, raw)
    x_test = np.stack([gray(i, (32, 32)) for i in range(12)])[..., None]
    write_figures_and_report(run, config, x_test, test, metrics)
    for figure in (rundir.ACC_FIGURE, rundir.MATRIX_FIGURE, rundir.PREDICTIONS_FIGURE, rundir.RELIABILITY_FIGURE):
        assert run.file(figure).read_bytes()[:8] == PNG, figure
    report = run.file(rundir.REPORT).read_text()
    assert report == render_report(config, metrics)
    assert f"| test | 12 | {100 * metrics['test']['accuracy']:.1f}%" in report
    assert "1,234,567 parameters" in report and "best validation accuracy at epoch 2 of 3" in report
    assert "T = 1.500" in report and "reaches **0.200**" in report and "95.0%" in report
    assert "patient-grouped (no patient in two splits)" in report and "shortcut probe" not in report
    page = run.file(rundir.REPORT_HTML).read_text()
    assert page.count('src="data:image/png;base64,') == 4  # every figure inline


@pytest.mark.parametrize("run_info, expected", [
    ({"images_without_patient_id": 22}, "image-level (no patient ids"),
    ({"images_without_patient_id": 5}, "partly patient-grouped (5 of 22 images have no patient id"),
    ({"group_by": "none"}, "image-level (--group-by none"),
    ({"blank_fraction": 0.75}, "**shortcut probe**: the central 75% x 75%"),
    ({"skipped": {"a.png": "a.png: not an image file"}}, "left out 1 file(s) (unreadable, a copy counted once, a label conflict): `a.png: not an image file`"),
    ({"confounding": "Labels are confounded with the source: every covid image comes from x."},
     "> **Warning.** Labels are confounded"),
])
def test_render_report_states_the_protocol_and_warnings(scored, run_info, expected):
    test, calibration, raw = scored
    config = TrainConfig(data="synthetic", image_size=32).resolve()
    assert expected in render_report(config, _metrics(test, calibration, raw, **run_info))


def test_render_report_names_the_settings_for_other_sources(scored):
    test, calibration, raw = scored
    plain = render_report(TrainConfig(data="synthetic", image_size=32).resolve(), _metrics(test, calibration, raw))
    assert "for other sources" not in plain
    config = TrainConfig(data="synthetic", image_size=32, lungs="crop", source_adversary=0.1).resolve()
    report = render_report(config, _metrics(test, calibration, raw))
    assert "- for other sources: lung crop, source adversary 0.1\n" in report


def test_the_report_figure_gets_overlays(tmp_path):
    from covidxray.models import load_model

    model = load_model(build_run(tmp_path / "run") / rundir.MODEL)
    images = np.stack([gray(i, (32, 32)) for i in range(3)])[..., None]
    maps = with_heatmaps(model, images, np.array([0, 1, 2]))
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32 and 0 <= maps.min() <= maps.max() <= 1


def test_a_model_without_convolutions_keeps_the_plain_images():
    import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x)), name="flat")
    images = np.stack([gray(i) for i in range(2)])[..., None]
    assert with_heatmaps(model, images, np.array([0, 1])) is None  # the report goes on without


def test_user_strings_show_literally_in_report_md_and_html(scored, tmp_path):
    """Paths, sources, skipped-file messages and the warning are the user's text, never HTML or Markdown."""
    import html
    import re

    from covidxray.reports.html import render_html

    test, calibration, raw = scored
    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    path = f"data/*{hostile}|<script>alert(1)</script>`.png"
    config = TrainConfig(data=f"data/{hostile}_*x*|`y`", image_size=32).resolve()
    metrics = _metrics(test, calibration, raw, skipped={path: f"{path}: not an image file"},
                       confounding=f"Labels are confounded with the source: every covid image comes from {hostile}.")
    metrics["test"] = {**metrics["test"], "per_source": {hostile: metrics["test"], "a|b": metrics["test"]}}
    report = render_report(config, metrics)
    page = render_html(report, tmp_path)
    outside_code = re.sub(r"(`+).*?\1", "", report)  # code spans are literal in any Markdown renderer
    assert "<img" not in outside_code and "<script" not in outside_code and "a|b" not in outside_code
    assert "<img src=x" not in page and "<script" not in page and not re.search(r"<[^>]*onerror", page)
    cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", page)]
    assert hostile in cells and "a|b" in cells  # one cell each, shown as written
    codes = [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", page)]
    assert f"data/{hostile}_*x*|`y`" in codes and f"{path}: not an image file" in codes
    assert f"every covid image comes from {hostile}." in html.unescape(re.sub(r"<[^>]*>", "", page))


def test_the_report_says_when_scaling_made_the_test_split_worse(scored):
    from covidxray.reports.report import calibration_section

    _, calibration, _ = scored
    better = {"ece_before": 0.10, "ece_after": 0.05, "loss_before": 0.50, "loss_after": 0.45}
    worse = {**better, "ece_after": 0.12}
    text = "\n".join(calibration_section({**calibration.to_dict(), "validation": better, "test": better}))
    assert "worse" not in text
    text = "\n".join(calibration_section({**calibration.to_dict(), "validation": better, "test": worse}))
    assert "On the test split the kept scaling made calibration **worse**" in text
    assert "worse" not in "\n".join(calibration_section({"temperature": 1.0, "test": worse}))  # nothing was fitted


def test_the_report_gives_the_error_rate_when_answering_only_the_surest(scored):
    test, calibration, raw = scored
    metrics = _metrics(test, calibration, raw)
    config = TrainConfig(data="synthetic", image_size=32).resolve()
    assert "Answering only the surest" not in render_report(config, metrics)
    metrics["test"] = test.metrics()  # ScoredPredictions.metrics adds the risk-coverage curve
    report = render_report(config, metrics)
    curve = metrics["test"]["risk_coverage"]
    assert "## Answering only the surest" in report
    assert f"| test: error rate | {100 * curve['points'][0][1]:.1f}% |" in report
    assert curve["points"][0][1] == pytest.approx(1 - metrics["test"]["accuracy"])  # everything answered


def test_the_report_says_whether_the_temperature_was_kept(scored):
    from covidxray.reports.report import calibration_section

    _, calibration, _ = scored
    validation = {"ece_before": 0.10, "ece_after": 0.08, "loss_before": 0.500, "loss_after": 0.450}
    test = {"ece_before": 0.054, "ece_after": 0.092, "loss_before": 0.40, "loss_after": 0.42}
    kept = {**calibration.to_dict(), "fitted_temperature": 1.5, "temperature_kept": True, "keep_margin": 0.01,
            "validation": validation, "test": test}
    text = "\n".join(calibration_section(kept))
    assert "T = 1.500" in text and "lowered the validation loss by 10.0% (kept only where it lowers it by at least 1.0%)" in text
    assert "**Kept**" in text and "| validation | 10.0% | 8.0% | 0.500 | 0.450 |" in text
    assert "| test | 5.4% | 9.2% | 0.400 | 0.420 |" in text and "kept scaling made calibration **worse**" in text
    dropped = {**kept, "temperature": 1.0, "temperature_kept": False, "validation": {**validation, "loss_after": 0.498}}
    text = "\n".join(calibration_section(dropped))
    assert "**Not kept**" in text and "model's own probabilities (T = 1)" in text and "by 0.4%" in text
    assert "| test | 5.4% | 9.2% |" in text and "worse" not in text  # shown, but not applied: nothing made worse
    config = TrainConfig(data="synthetic", image_size=32).resolve()
    metrics = _metrics(*scored)
    assert "probabilities are temperature-scaled" in render_report(config, metrics)
    metrics["calibration"].update(temperature_kept=False)
    assert "probabilities are the model's own" in render_report(config, metrics)
