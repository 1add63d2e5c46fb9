"""The shortcut probe as a command: train on images whose lung field is blanked, and say what survives.

See :mod:`covidxray.data.blanking` for why. :func:`probe` trains an ordinary run with
``blank_fraction`` set and adds to its metrics the accuracy of always answering the commonest
test class, the bar a model that learned nothing would reach; :func:`probe_summary` says in one
sentence what the score means.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from covidxray import rundir
from covidxray.config import TrainConfig
from covidxray.data.blanking import DEFAULT_FRACTION
from covidxray.evaluation.metrics import chance_accuracy
from covidxray.training.train import train


def probe(config: TrainConfig, out: str | Path, *, overwrite: bool = False, verbose: int = 1,
          progress: bool | None = None) -> dict:
    """Train ``config`` with the lung field blanked (``config.blank_fraction``, or the default
    :data:`DEFAULT_FRACTION` when it is 0); returns ``metrics.json``'s content with a ``"probe"`` entry."""
    if not config.blank_fraction:
        config = replace(config, blank_fraction=DEFAULT_FRACTION)
    metrics = train(config, out, overwrite=overwrite, verbose=verbose, progress=progress)
    test = metrics["test"]
    targets = np.repeat(np.arange(len(test["classes"])), [c["support"] for c in test["per_class"].values()])
    metrics["probe"] = {"blank_fraction": config.blank_fraction, "chance_accuracy": chance_accuracy(targets)}
    rundir.RunDir(out).write_json(rundir.METRICS, metrics)
    return metrics


def probe_summary(metrics: dict) -> str:
    """What a probe's test accuracy means, in words a student understands."""
    probe, test = metrics["probe"], metrics["test"]
    return (f"shortcut probe: with the central {probe['blank_fraction']:.0%} of every image blanked, test accuracy is "
            f"{test['accuracy']:.1%} against {probe['chance_accuracy']:.1%} for always answering the commonest class. "
            "Well above chance means the model can tell the classes apart without the lungs: the data lets it "
            "learn the source (markers, borders, exposure) instead of the disease.")
