"""covidxray.training.probe: the probe trains with the lung field blanked and reports chance."""

from __future__ import annotations

import json

import pytest

import covidxray.training.probe as probe_module
from covidxray.config import TrainConfig
from covidxray.data.blanking import DEFAULT_FRACTION
from covidxray.training.probe import probe, probe_summary

TEST = {"accuracy": 0.83, "classes": ["covid", "normal", "pneumonia"],
        "per_class": {"covid": {"support": 2}, "normal": {"support": 6}, "pneumonia": {"support": 2}}}


@pytest.fixture
def trained(monkeypatch):
    """train() replaced by one that records its config and returns fixed metrics."""
    seen = []

    def train(config, out, **kwargs):
        seen.append(config)
        return {"test": dict(TEST), "run": {}}

    monkeypatch.setattr(probe_module, "train", train)
    return seen


def test_probe_blanks_by_default_and_adds_chance(trained, tmp_path):
    metrics = probe(TrainConfig(data="d"), tmp_path, verbose=0)
    assert trained[0].blank_fraction == DEFAULT_FRACTION
    assert metrics["probe"] == {"blank_fraction": DEFAULT_FRACTION, "chance_accuracy": 0.6}  # 6 of 10 are normal
    assert json.loads((tmp_path / "metrics.json").read_text())["probe"] == metrics["probe"]
    assert probe(TrainConfig(data="d", blank_fraction=0.5), tmp_path)["probe"]["blank_fraction"] == 0.5
    assert trained[1].blank_fraction == 0.5


def test_probe_summary_compares_with_chance():
    summary = probe_summary({"test": TEST, "probe": {"blank_fraction": 0.75, "chance_accuracy": 0.6}})
    assert summary.startswith("shortcut probe: with the central 75% of every image blanked, test accuracy is 83.0% "
                              "against 60.0% for always answering the commonest class.")
    assert "learn the source" in summary
