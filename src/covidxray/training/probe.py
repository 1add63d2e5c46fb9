"""The shortcut probe as a command: train on images with part of each blanked, and say what survives.

See :mod:`covidxray.data.blanking` for why. :func:`probe` trains an ordinary run with a region
blanked in every image (``--region``: the central box of ``blank_fraction``, the segmented lungs,
or everything but the lungs) and adds to its metrics the accuracy of always answering the
commonest test class, the bar a model that learned nothing would reach; :func:`probe_summary`
says in one sentence what the score means, in ``report.md`` too.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from covidxray import rundir
from covidxray.config import Runtime, TrainConfig
from covidxray.data.blanking import DEFAULT_FRACTION
from covidxray.errors import CovidXrayError
from covidxray.evaluation.metrics import chance_accuracy
from covidxray.reports.markdown import write_report
from covidxray.reports.report import render_report
from covidxray.training.tracking import Tracker, closing, make_tracker
from covidxray.training.train import train


def probe(config: TrainConfig, out: str | Path, *, runtime: Runtime | None = None, overwrite: bool = False,
          verbose: int = 1, reference: str | Path | None = None, track: str | Tracker = "none") -> dict:
    """Train ``config`` with part of every image blanked (``config.blank_region``: the central box of
    ``config.blank_fraction``, or the default :data:`DEFAULT_FRACTION` when it is 0; the segmented
    lungs; or all but the lungs); returns ``metrics.json``'s content with a ``"probe"`` entry.

    ``reference``: a run trained on the same data without blanking; the summary then says how much of
    its score survives. ``runtime``, ``track``: as for :func:`~covidxray.training.train.train`, with the probe's
    chance accuracy and its report."""
    if config.blank_region == "box" and not config.blank_fraction:
        config = replace(config, blank_fraction=DEFAULT_FRACTION)
    baseline = reference_scores(reference) if reference is not None else None  # a bad folder fails before training
    tracker = make_tracker(track)
    with closing(tracker, track):
        metrics = train(config, out, runtime=runtime, overwrite=overwrite, verbose=verbose, track=tracker)
        _add_probe(metrics, config, out, baseline, reference)
        tracker.log_metrics({"chance_accuracy": metrics["probe"]["chance_accuracy"]})
        tracker.log_files(Path(out), (rundir.METRICS, rundir.REPORT, rundir.REPORT_HTML))  # with the probe's summary
    return metrics


def _add_probe(metrics: dict, config: TrainConfig, out, baseline: dict | None, reference) -> None:
    """Add the probe's entry to a finished run's metrics, and its summary to the report."""
    test = metrics["test"]
    targets = np.repeat(np.arange(len(test["classes"])), [c["support"] for c in test["per_class"].values()])
    metrics["probe"] = {"region": config.blank_region, "chance_accuracy": chance_accuracy(targets)}  # lungs: in "run"
    if config.blank_region == "box":
        metrics["probe"]["blank_fraction"] = config.blank_fraction
    if baseline is not None:
        if baseline["test_images"] != test["n"]:
            raise CovidXrayError(f"{reference}: its test split holds {baseline['test_images']} images, the probe's "
                                 f"{test['n']}; give a run trained on the same data with the same split settings")
        metrics["probe"]["reference"] = baseline
    metrics["probe"]["summary"] = probe_summary(metrics)
    run = rundir.RunDir(out)
    run.write_json(rundir.METRICS, metrics)
    write_report(run.file(rundir.REPORT), render_report(run.load_config(), metrics))  # with the summary


def reference_scores(reference: str | Path) -> dict:
    """The test accuracy and COVID AUC of a finished run, for :func:`probe`'s comparison."""
    path = rundir.RunDir(reference).require(rundir.METRICS)
    try:
        test = json.loads(path.read_text())["test"]
        float(test["accuracy"]), int(test["n"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CovidXrayError(f"{path}: not a finished run's metrics ({error}); give --reference a run folder "
                             "written by covidxray train") from None
    return {"run": str(reference), "accuracy": test["accuracy"], "covid_auc": (test.get("covid") or {}).get("auc"),
            "test_images": test["n"]}


#: What each probe hides, completing "with ...".
HIDDEN = {"box": "the central {fraction:.0%} of every image blanked", "lungs": "the lungs blanked out (only the "
          "rest of the image visible)", "outside-lungs": "everything but the lungs blanked out (only the lungs visible)"}


def probe_summary(metrics: dict) -> str:
    """What a probe's test scores mean, in words a student understands."""
    probe, test = metrics["probe"], metrics["test"]
    region = probe.get("region", "box")
    hidden = HIDDEN[region].format(fraction=probe.get("blank_fraction", DEFAULT_FRACTION))
    chance, accuracy = probe["chance_accuracy"], test["accuracy"]
    kept = max(0.0, (accuracy - chance) / (1 - chance)) if chance < 1 else 0.0
    auc = (test.get("covid") or {}).get("auc")
    auc_text = f" and tells COVID-19 from the rest with an AUC of {auc:.2f} (0.5 is a coin toss)" if auc is not None else ""
    sentence = (f"shortcut probe: with {hidden}, the model is right on {accuracy:.1%} of the test images{auc_text}, "
                f"against {chance:.1%} for always answering the commonest class: it keeps {kept:.0%} of the way from "
                "guessing to a perfect score.")
    reference = probe.get("reference")
    if reference is not None:
        whole = reference["accuracy"]
        share = max(0.0, (accuracy - chance) / (whole - chance)) if whole > chance else 0.0
        ref_auc = f", COVID-19 AUC {reference['covid_auc']:.2f}" if reference.get("covid_auc") is not None else ""
        sentence += (f" The same model seeing the whole image scored {whole:.1%}{ref_auc}: {share:.0%} of its margin "
                     f"over guessing survives {'without the lungs' if region != 'outside-lungs' else 'with the lungs alone'}.")
    if region == "outside-lungs":
        return sentence + " This is what the lungs alone are worth."
    return sentence + (" Well above chance means the model can tell the classes apart without the lungs: the data lets "
                       "it learn the source (markers, borders, exposure) instead of the disease.")
