"""covidxray.training.probe: the probe trains with the lung field blanked and reports chance."""

from __future__ import annotations

import json

import pytest

import covidxray.training.probe as probe_module
from covidxray.config import TrainConfig
from covidxray.data.blanking import DEFAULT_FRACTION
from covidxray.errors import CovidXrayError
from covidxray.training.probe import probe, probe_summary

TEST = {"accuracy": 0.83, "n": 10, "classes": ["covid", "normal", "pneumonia"],
        "per_class": {"covid": {"support": 2}, "normal": {"support": 6}, "pneumonia": {"support": 2}}}


@pytest.fixture
def trained(monkeypatch):
    """train() replaced by one that records its config, writes it as a run would and returns fixed
    metrics; the report rendered as its probe summary alone."""
    seen = []

    def train(config, out, **kwargs):
        seen.append(config)
        config.resolve().save(out / "config.json")
        return {"test": dict(TEST), "run": {}}

    monkeypatch.setattr(probe_module, "train", train)
    monkeypatch.setattr(probe_module, "render_report", lambda config, metrics: metrics["probe"]["summary"])
    return seen


def test_probe_blanks_by_default_and_adds_chance(trained, tmp_path):
    metrics = probe(TrainConfig(data="d"), tmp_path, verbose=0)
    assert trained[0].blank_fraction == DEFAULT_FRACTION and trained[0].blanking == "box"
    assert metrics["probe"] == {"region": "box", "blank_fraction": DEFAULT_FRACTION,
                                "chance_accuracy": 0.6, "summary": probe_summary(metrics)}  # 6 of 10 are normal
    assert json.loads((tmp_path / "metrics.json").read_text())["probe"] == metrics["probe"]
    assert (tmp_path / "report.md").read_text().strip() == metrics["probe"]["summary"]  # the report says it too
    assert probe(TrainConfig(data="d", blank_fraction=0.5), tmp_path)["probe"]["blank_fraction"] == 0.5
    assert trained[1].blank_fraction == 0.5


def test_a_lung_probe_has_no_box_fraction(trained, tmp_path):
    metrics = probe(TrainConfig(data="d", blank_region="lungs", lungs="crop"), tmp_path, verbose=0)
    assert trained[0].blanking == "lungs" and trained[0].blank_fraction == 0
    assert metrics["probe"]["region"] == "lungs" and trained[0].lungs == "crop"  # the run's "lungs" records the crop
    assert "blank_fraction" not in metrics["probe"]


def test_probe_summary_compares_with_chance():
    summary = probe_summary({"test": TEST, "probe": {"blank_fraction": 0.75, "chance_accuracy": 0.6}})
    assert summary.startswith("shortcut probe: with the central 75% of every image blanked, the model is right on "
                              "83.0% of the test images, against 60.0% for always answering the commonest class")
    assert "learn the source" in summary


def probe_metrics(region: str, accuracy: float, chance: float, auc: float | None = None, **probe) -> dict:
    test = {"accuracy": accuracy}
    if auc is not None:
        test["covid"] = {"auc": auc}
    return {"test": test, "probe": {"region": region, "chance_accuracy": chance, **probe}}


def test_probe_summary_of_the_box_probe():
    summary = probe_summary(probe_metrics("box", 0.8, 0.6, 0.91, blank_fraction=0.5))
    assert summary.startswith("shortcut probe: with the central 50% of every image blanked, the model is right on "
                              "80.0% of the test images and tells COVID-19 from the rest with an AUC of 0.91")
    assert "against 60.0% for always answering the commonest class" in summary
    assert "keeps 50% of the way from guessing to a perfect score" in summary  # (0.8 - 0.6) / (1 - 0.6)
    assert "learn the source" in summary


def test_probe_summary_of_the_box_probe_defaults_to_the_default_fraction():
    summary = probe_summary(probe_metrics("box", 0.7, 0.5))
    assert f"the central {DEFAULT_FRACTION:.0%} of every image blanked" in summary
    assert "AUC" not in summary  # no COVID-19 class scored
    assert "keeps 40% of the way" in summary


def test_probe_summary_of_the_lungs_probe():
    summary = probe_summary(probe_metrics("lungs", 0.9, 0.4, 0.97))
    assert "with the lungs blanked out (only the rest of the image visible)" in summary
    assert "right on 90.0% of the test images" in summary and "an AUC of 0.97" in summary
    assert "against 40.0%" in summary
    assert "keeps 83% of the way" in summary  # 0.5 / 0.6
    assert "without the lungs" in summary


def test_probe_summary_of_the_outside_lungs_probe():
    summary = probe_summary(probe_metrics("outside-lungs", 0.75, 0.5, 0.8))
    assert "with everything but the lungs blanked out (only the lungs visible)" in summary
    assert "right on 75.0%" in summary and "AUC of 0.80" in summary and "keeps 50% of the way" in summary
    assert summary.endswith("This is what the lungs alone are worth.")
    assert "learn the source" not in summary


def test_probe_summary_keeps_nothing_at_or_below_chance():
    assert "keeps 0% of the way" in probe_summary(probe_metrics("lungs", 0.45, 0.6))
    assert "keeps 0% of the way" in probe_summary(probe_metrics("lungs", 0.6, 0.6))
    assert "keeps 0% of the way" in probe_summary(probe_metrics("box", 1.0, 1.0))  # one class: nothing to learn
    assert "keeps 100% of the way" in probe_summary(probe_metrics("lungs", 1.0, 0.6))


def test_probe_summary_reads_an_older_probe_without_a_region():
    summary = probe_summary({"test": {"accuracy": 0.84}, "probe": {"blank_fraction": 0.75, "chance_accuracy": 0.6}})
    assert "with the central 75% of every image blanked" in summary and "keeps 60% of the way" in summary


def write_reference(folder, accuracy=0.9, auc=0.97, n=10):
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"test": {"accuracy": accuracy, "n": n, "covid": {"auc": auc}}}))
    return folder


def test_a_reference_run_says_how_much_of_its_score_survives(trained, tmp_path):
    reference = write_reference(tmp_path / "whole")
    metrics = probe(TrainConfig(data="d", blank_region="lungs"), tmp_path / "probe", verbose=0, reference=reference)
    assert metrics["probe"]["reference"] == {"run": str(reference), "accuracy": 0.9, "covid_auc": 0.97, "test_images": 10}
    summary = metrics["probe"]["summary"]
    assert "The same model seeing the whole image scored 90.0%, COVID-19 AUC 0.97" in summary
    assert "77% of its margin over guessing survives without the lungs" in summary  # (0.83 - 0.6) / (0.9 - 0.6)


def test_a_reference_run_must_fit(trained, tmp_path):
    with pytest.raises(CovidXrayError, match="missing; is .* a finished covidxray run"):
        probe(TrainConfig(data="d"), tmp_path / "probe", reference=tmp_path / "nothing")
    assert trained == []  # refused before training
    reference = write_reference(tmp_path / "other", n=99)
    with pytest.raises(CovidXrayError, match="its test split holds 99 images, the probe's 10"):
        probe(TrainConfig(data="d"), tmp_path / "probe", reference=reference)
    (reference / "metrics.json").write_text("{}")
    with pytest.raises(CovidXrayError, match="not a finished run's metrics"):
        probe(TrainConfig(data="d"), tmp_path / "probe2", reference=reference)
