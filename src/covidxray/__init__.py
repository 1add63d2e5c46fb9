"""covidxray: train, evaluate and explain chest X-ray classifiers (COVID-19, pneumonia).

For research and teaching only, never for diagnosis.

The library API, one function per command::

    import covidxray

    config = covidxray.TrainConfig(data="../shared/data/darkcovidnet", task="binary")
    metrics = covidxray.train(config, "runs/binary")          # covidxray train
    covidxray.resume("runs/binary")                           # covidxray train --resume
    covidxray.cross_validate(config, "runs/cv", folds=5)      # covidxray cv
    covidxray.probe(config, "runs/probe")                     # covidxray probe
    covidxray.evaluate("runs/binary", "../shared/data/ieee8023")  # covidxray evaluate
    predictor = covidxray.load_predictor("preset:" + covidxray.DEFAULT_PRESET)  # predict
    predictor.predict_files(["xray.png"])
    covidxray.serve("runs/binary")                            # covidxray serve

Importing the package is light: each name loads its module (and Keras, where it needs it)
when first used.
"""

from __future__ import annotations

import importlib

from covidxray.backend import choose_backend, import_keras_quietly, quiet_backend_logs, use_onednn
from covidxray.version import __version__

choose_backend()  # must run before anything imports keras
use_onednn()  # TensorFlow's fast CPU kernels on AVX2-only CPUs too (it turns them on only with VNNI or AMX)
quiet_backend_logs()  # TensorFlow's start-up lines stay off the terminal (TF_CPP_MIN_LOG_LEVEL=0 shows them)

#: Public name -> the module that defines it.
_API = {
    "TrainConfig": "covidxray.config",
    "CovidXrayError": "covidxray.errors",
    "train": "covidxray.training.train",
    "resume": "covidxray.training.train",
    "cross_validate": "covidxray.training.cv",
    "probe": "covidxray.training.probe",
    "evaluate": "covidxray.evaluation.evaluate",
    "ScoredPredictions": "covidxray.evaluation.scoring",
    "Calibration": "covidxray.inference.decision",
    "Predictor": "covidxray.inference.predictor",
    "load_predictor": "covidxray.inference.predictor",
    "XrayAnalyzer": "covidxray.inference.analysis",
    "grad_cam": "covidxray.inference.heatmaps",
    "export_run": "covidxray.inference.export",
    "serve": "covidxray.web.app",
    "create_model": "covidxray.models",
    "list_models": "covidxray.models",
    "load_model": "covidxray.models",
    "DEFAULT_PRESET": "covidxray.presets",
    "list_presets": "covidxray.presets",
    "load_dataset": "covidxray.data.sources",
    "load_labelled_images": "covidxray.data.loading",
    "download_dataset": "covidxray.data.download",
}

#: Names whose module imports Keras (and so the backend, with its start-up lines) when loaded; the
#: others load it, where they need it, through :func:`covidxray.models.load_model` or ``create_model``.
_WITH_KERAS = {"train", "resume", "cross_validate", "probe", "grad_cam"}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name in _API:
        if name in _WITH_KERAS:
            import_keras_quietly()  # TensorFlow's C++ start-up lines off the terminal and the notebook
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'covidxray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
