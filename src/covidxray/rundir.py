"""The run directory: where each file of a run lives, and atomic writes into it.

A run directory holds ``model.keras``, ``config.json``, ``split.csv``, ``history.csv``,
``metrics.json``, ``calibration.json``, the figures (``acc.png``, ``mat.png``, ``pred.png``,
``calibration.png``), ``report.md`` and ``report.html`` (the same, one self-contained page); while
it trains, ``backup/`` (what ``train --resume`` continues from), and once exported, ``model.onnx`` or
``saved_model/``. Every file is written to a temporary name and renamed (a folder: built beside and
swapped in), so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from covidxray.errors import CovidXrayError
from covidxray.files import atomic_write_text

MODEL = "model.keras"
CONFIG = "config.json"
SPLIT = "split.csv"
HISTORY = "history.csv"
METRICS = "metrics.json"
REPORT = "report.md"
REPORT_HTML = "report.html"  # report.md as one self-contained page
CALIBRATION = "calibration.json"
ACC_FIGURE, MATRIX_FIGURE, PREDICTIONS_FIGURE = "acc.png", "mat.png", "pred.png"
RELIABILITY_FIGURE = "calibration.png"
ONNX_MODEL, SAVED_MODEL = "model.onnx", "saved_model"
BACKUP = "backup"  # folder: Keras's BackupAndRestore state and covidxray's callback states
RUN_FILES = (MODEL, CONFIG, SPLIT, HISTORY, METRICS, REPORT, REPORT_HTML, CALIBRATION, ACC_FIGURE, MATRIX_FIGURE,
             PREDICTIONS_FIGURE, RELIABILITY_FIGURE, ONNX_MODEL)
RUN_FOLDERS = (BACKUP, SAVED_MODEL)


class RunDir:
    """Paths of a run's files, and reading back a finished run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def refuse_to_replace(self, overwrite: bool = False) -> None:
        """Raise if the folder holds a trained model, unless ``overwrite``."""
        if self.path.exists() and not self.path.is_dir():
            raise CovidXrayError(f"{self.path}: is a file, not a folder; choose another --out")
        if overwrite:
            return
        if self.file(BACKUP).exists() and not self.file(METRICS).exists():
            raise CovidXrayError(
                f"{self.path}: holds an interrupted run; continue it with covidxray train --resume {self.path}, "
                "or pass --overwrite to start again"
            )
        if self.file(MODEL).exists():
            raise CovidXrayError(
                f"{self.path}: already holds a trained run; choose another --out or pass --overwrite"
            )

    def create(self) -> None:
        """Make the folder, and remove an earlier run's files from it (``--overwrite``).

        Every file of the old run goes, so an interrupted new run never leaves an old model
        beside a new configuration.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.remove_temporaries()
        for stale in RUN_FILES:
            self.file(stale).unlink(missing_ok=True)
        for stale in RUN_FOLDERS:
            shutil.rmtree(self.file(stale), ignore_errors=True)

    def remove_temporaries(self) -> None:
        """Remove what a killed process left under temporary names (``.NAME.*.tmp*``, ``.NAME.old``)."""
        from covidxray.files import recover_dir

        for name in RUN_FOLDERS:
            recover_dir(self.file(name))
        for stale in self.path.glob(".*.tmp*"):
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)

    def require(self, name: str) -> Path:
        """The path of a file the run must have, or a clear error."""
        target = self.file(name)
        if not target.is_file():
            raise CovidXrayError(f"{target}: missing; is {self.path} a finished covidxray run? (train one with covidxray train)")
        return target

    def load_config(self):
        from covidxray.config import TrainConfig

        path = self.require(CONFIG)
        try:
            return TrainConfig.load(path)
        except (ValueError, TypeError, AttributeError) as error:
            raise CovidXrayError(f"{path}: not a covidxray run configuration ({error}); retrain the run") from None

    def write_json(self, name: str, data) -> Path:
        target = self.file(name)
        atomic_write_text(target, json.dumps(data, indent=2, default=_json_default) + "\n")
        return target


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_csv(target: Path, table) -> None:
    """Write a pandas table atomically."""
    atomic_write_text(target, table.to_csv(index=False))
