"""Evaluate a trained run (or a preset) on any labelled dataset, leaving out the images it has seen."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from covidxray import rundir
from covidxray.data.loading import load_labelled_images
from covidxray.data.sources import confounding_warning
from covidxray.errors import CovidXrayError, DatasetError
from covidxray.evaluation.attention import heat_in_lungs
from covidxray.evaluation.calibration import calibration_summary
from covidxray.evaluation.scoring import ScoredPredictions, per_source_required
from covidxray.files import check_writable
from covidxray.inference.engines import GRADIENTS
from covidxray.inference.familiarity import familiarity_summary
from covidxray.inference.predictor import Predictor, load_predictor

log = logging.getLogger(__name__)


def evaluate(run: str | Path | Predictor | None, data, *, cache_dir=None,
             per_source: bool = False, include_seen: bool = False, heat: bool = False,
             predictions: str | Path | None = None) -> dict:
    """Metrics of a run's model on ``data`` (the shape of ``metrics.json``'s ``"test"``).

    ``run``: a run folder, ``preset:NAME``, a loaded :class:`Predictor`, or None (the default
    preset). Images of classes the model does not know are left out; a dataset may lack some of
    the model's classes (an all-COVID external set, say): metrics that need them read None.
    Images the run trained or selected its model on (same original file name, same pixels, or a
    near-duplicate of a training or validation image in ``split.csv``) are left out unless
    ``include_seen``. ``heat``:
    also measure the share of Grad-CAM heat inside the lungs (``"heat_in_lungs"``; Keras engine).
    ``predictions``: a CSV file to write with one row per image evaluated
    (:meth:`ScoredPredictions.per_image`: path, true label, predicted class, source and the
    calibrated probability of each class; plus the lung mask's flag for a ``--lungs crop`` run).
    """
    if predictions is not None:
        check_writable(predictions, "--predictions")  # before any work
    predictor = run if isinstance(run, Predictor) else load_predictor(run)
    if heat:
        predictor.engine.require(GRADIENTS, "heat in the lungs")
    config = predictor.config
    loaded = load_labelled_images(data, config.classes, predictor.decode_side, cache_dir=cache_dir, require_all=False)
    seen = (np.zeros(len(loaded.table), dtype=bool) if include_seen
            else predictor.seen(loaded.table, cache_dir=cache_dir, beside=data))
    if seen.any():
        log.info("left out %d images that the run trained or validated on (pass --include-seen to keep them)",
                 int(seen.sum()))
        if seen.all():
            raise DatasetError(f"{data}: every image was used to train {predictor.path}; evaluate on other images")
        loaded = loaded.subset(~seen)
    if per_source:
        per_source_required(loaded.table, str(data))
    prep = predictor.preprocessing
    prepared = None
    if prep.segments or heat:
        if not isinstance(loaded.images, np.ndarray):
            raise CovidXrayError(f"{data}: this run crops its images to the lungs (config.json), or heat in "
                                 "the lungs was asked for; evaluate on the image files, not a shard folder")
        prepared = predictor.prepare(loaded.images, list(loaded.table["pixels"]), lungs=heat)
    raw = predictor.predict_raw(loaded.images if prepared is None else prepared.images)
    scored = ScoredPredictions.from_raw(loaded.targets, raw, loaded.table, config.classes, predictor.calibration)
    metrics = scored.metrics(seed=config.seed)
    unlike = predictor.unlike_training(loaded.images if prepared is None else prepared.images, scored.probabilities)
    if unlike is not None:
        metrics["unlike_training"] = familiarity_summary(unlike, scored.predicted == scored.targets)
    if predictions is not None:
        rows = scored.per_image()
        if unlike is not None:
            rows["unlike_training"] = unlike
        if prep.segments:
            rows["lungs"] = prepared.quality
        rundir.write_csv(Path(predictions), rows)
    metrics["data"] = data if isinstance(data, str) else [str(d) for d in data]
    metrics["left_out_seen"] = int(seen.sum())
    metrics["tta"] = predictor.tta
    metrics["confounding"] = confounding_warning(loaded.table["label"], loaded.table["source"])
    metrics["calibration"] = {**predictor.calibration.to_dict(),
                              **calibration_summary(loaded.targets, raw, predictor.calibration)}
    metrics["skipped"] = loaded.skipped
    if prep.segments:
        metrics["lung_fallback"] = prep.fallback(loaded.table["path"], prepared.quality)
    if heat:
        metrics["heat_in_lungs"] = heat_in_lungs(predictor.model, prepared.images, prepared.lungs, prepared.quality,
                                                 scored.predicted, loaded.table, config.classes)
    return metrics
