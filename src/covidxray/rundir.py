"""The run directory: where each file of a run lives, and atomic writes into it.

A run directory holds ``model.keras``, ``config.json``, ``split.csv``, ``history.csv``,
``metrics.json``, ``calibration.json``, the figures (``acc.png``, ``mat.png``, ``pred.png``,
``calibration.png``), ``report.md`` and ``report.html`` (the same, one self-contained page); while
it trains, ``backup/`` (what ``train --resume`` and ``lungs train --resume`` continue from), and once exported, ``model.onnx`` or
``saved_model/``. Every file is written to a temporary name and renamed (a folder: built beside and
swapped in), so an interrupted run never leaves a half-written file behind; but ``tensorboard/``,
TensorBoard's event files (:mod:`covidxray.training.tracking`), which TensorBoard appends to.

A run removes only what covidxray wrote: its own temporaries (:func:`covidxray.files.is_temporary`)
and, replacing an earlier run, the files of the names above; a folder that holds anything else
and is not a run is refused unless ``--overwrite``. A run that replaces a finished one
(``--overwrite``) trains in ``.covidxray-staged/`` inside the folder and is swapped in only once
complete, so until then the old run stays whole; ``train --resume`` continues such a staged run
when it was interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from covidxray.errors import CovidXrayError, DatasetError
from covidxray.files import atomic_write_text, check_can_create, is_temporary, kind_of, recover_dir, remove_temporaries

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
FAMILIARITY = "familiarity.npz"  # the "unlike the training data" flag (inference.familiarity)
TEST_PREDICTIONS = "test_predictions.csv"  # a cross-validation fold's test probabilities, one row per image
BACKUP = "backup"  # folder: Keras's BackupAndRestore state and covidxray's callback states
TENSORBOARD = "tensorboard"  # folder: TensorBoard event files (training.tracking)
RUN_FILES = (MODEL, CONFIG, SPLIT, HISTORY, METRICS, REPORT, REPORT_HTML, CALIBRATION, ACC_FIGURE, MATRIX_FIGURE,
             PREDICTIONS_FIGURE, RELIABILITY_FIGURE, ONNX_MODEL)
RUN_FOLDERS = (BACKUP, SAVED_MODEL, TENSORBOARD)
SPLIT_NAMES = ("train", "validation", "test")  # data.splits.SPLITS, which this module may not import
SEGMENTER_SETTINGS = "segmenter.json"  # a lung segmenter's marker: presets.SEGMENTER_SETTINGS, not imported here
STAGED = ".covidxray-staged"  # folder: a run that will replace this one (--overwrite), until it is complete
REPLACED = ".covidxray-replaced"  # folder: the replaced run's files, while the new ones move in
_ALL_ASIDE = ".all-aside"  # in REPLACED: every file of the old run is in it


class RunDir:
    """Paths of a run's files, and reading back a finished run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def refuse_to_replace(self, overwrite: bool = False) -> None:
        """Raise unless a run may be written into the folder: it is new, empty, or holds a run that has
        neither a model nor a backup (killed before its first epoch); with ``overwrite``, any folder.

        Checked before anything is read or written; a replacement left half moved in is finished first.
        """
        if self.path.exists() and not self.path.is_dir():
            raise CovidXrayError(f"{self.path}: is a file, not a folder; choose another --out")
        if not self.path.exists():
            check_can_create(self.path.parent, f"--out {self.path}")
            return
        self.recover()
        for name in (*RUN_FILES, *RUN_FOLDERS):  # a link or FIFO of a run file's name: found now, not after training
            if os.path.islink(self.file(name)) or (name in RUN_FILES and kind_of(self.file(name)) not in
                                                   ("nothing", "a regular file", "a folder")):
                raise CovidXrayError(f"{self.file(name)}: is {kind_of(self.file(name))}; a run replaces only its own "
                                     "regular files; move it away or choose another --out")
        folders = [name for name in RUN_FOLDERS if os.path.lexists(self.file(name))]
        if folders and not self.has_marker():  # a run would remove them whole: never a user's folder
            raise CovidXrayError(
                f"{self.path}: not a covidxray run, and holds {', '.join(f'{n}/' for n in folders)}, which a run "
                f"writing here would replace; move {'it' if len(folders) == 1 else 'them'} away or choose another --out")
        if overwrite:
            return
        command = "covidxray lungs train" if self.file(SEGMENTER_SETTINGS).is_file() else "covidxray train"
        resume = f"continue it with {command} --resume {self.path}, or pass --overwrite to start again"
        if self.interrupted_replacement() is not None:
            raise CovidXrayError(f"{self.path}: holds an interrupted run (started with --overwrite, in {STAGED}); "
                                 f"{resume}")
        marked = self.has_marker()  # backup/ or model.keras alone may be a user's: a run is what a run marks
        if marked and self.file(BACKUP).exists() and not self.file(METRICS).exists():
            raise CovidXrayError(f"{self.path}: holds an interrupted run; {resume}")
        if marked and self.file(MODEL).exists():
            raise CovidXrayError(
                f"{self.path}: already holds a trained run; choose another --out or pass --overwrite"
            )
        others = self.entries()
        if others and not marked:
            listed = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
            raise CovidXrayError(
                f"{self.path}: not empty and not a covidxray run (holds {listed}); choose a new or empty --out, "
                "or pass --overwrite to write the run into it (its files of the same names are replaced, others kept)"
            )

    def entries(self) -> list[str]:
        """The names in the folder, less covidxray's temporaries and staging folders."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if not is_temporary(p.name) and p.name not in (STAGED, REPLACED))

    def is_run(self) -> bool:
        """True where ``config.json`` is a covidxray run configuration."""
        try:
            self.load_config()
        except (CovidXrayError, OSError):
            return False
        return True

    def has_marker(self) -> bool:
        """True where the folder holds a run's own marker: a covidxray run configuration (``config.json``,
        written first by every run), or a lung segmenter's settings. Files of a run's names alone
        (``backup/``, ``model.keras``) are not one: a user's folder may hold them."""
        return self.is_run() or self.file(SEGMENTER_SETTINGS).is_file()

    def run_entries(self) -> list[str]:
        """The names of run files and folders present (what a new run in this folder replaces)."""
        return [name for name in (*RUN_FILES, *RUN_FOLDERS) if os.path.lexists(self.file(name))]

    def create(self, keep: tuple[str, ...] = ()) -> None:
        """Make the folder, and remove an earlier run's files from it, but those named in ``keep``.

        Only the run's own file names and covidxray's temporaries go (never a user's file), so an
        interrupted new run never leaves an old model beside a new configuration. Call it only on a
        folder :meth:`refuse_to_replace` allowed.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.remove_temporaries()
        for stale in RUN_FILES:
            if stale not in keep:
                self.file(stale).unlink(missing_ok=True)
        for stale in RUN_FOLDERS:
            if stale not in keep:
                shutil.rmtree(self.file(stale), ignore_errors=True)

    def remove_temporaries(self) -> None:
        """Remove what a killed process left under covidxray's temporary names, and nothing else."""
        for name in RUN_FOLDERS:
            recover_dir(self.file(name))
        remove_temporaries(self.path)

    # -- replacing a finished run (--overwrite) ---------------------------------------------------

    def stage(self) -> RunDir:
        """A fresh folder inside this one for a run that will replace it (:meth:`swap_in` when complete)."""
        staged = RunDir(self.file(STAGED))
        shutil.rmtree(staged.path, ignore_errors=True)  # an earlier replacement, given up (--overwrite)
        staged.path.mkdir(parents=True)
        return staged

    def interrupted_replacement(self) -> RunDir | None:
        """The staged run that ``train --resume`` continues: interrupted after its first epoch, else None."""
        staged = RunDir(self.file(STAGED))
        if not staged.path.is_dir():
            return None
        recover_dir(staged.file(BACKUP))
        return staged if staged.file(BACKUP).is_dir() and not staged.file(METRICS).exists() else None

    def swap_in(self, staged: RunDir) -> None:
        """Replace this folder's run by the complete run ``staged``: the old run's files go aside, the
        new ones move in (``metrics.json`` last: the run is complete again), then the old ones are
        removed. Files that are not a run's stay. A swap cut short is finished by :meth:`recover`."""
        self.file(REPLACED).mkdir(exist_ok=True)
        self._finish_swap(staged)

    def recover(self) -> None:
        """Finish a :meth:`swap_in` that a killed process left half done."""
        staged, aside = self.file(STAGED), self.file(REPLACED)
        if (staged / METRICS).is_file():  # complete: not, or not all, moved in
            self.swap_in(RunDir(staged))
        elif aside.exists():  # all moved in; only the clean-up was left
            shutil.rmtree(staged, ignore_errors=True)
            shutil.rmtree(aside)

    def _finish_swap(self, staged: RunDir) -> None:
        aside = self.file(REPLACED)
        if not (aside / _ALL_ASIDE).exists():
            for name in self.run_entries():
                os.replace(self.file(name), aside / name)
            (aside / _ALL_ASIDE).touch()
        names = [p.name for p in staged.path.iterdir()
                 if p.name not in (METRICS, BACKUP) and not is_temporary(p.name)]
        for name in [*sorted(names), METRICS]:
            if os.path.lexists(staged.file(name)):
                os.replace(staged.file(name), self.file(name))
        shutil.rmtree(staged.path)
        shutil.rmtree(aside)

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
            config = TrainConfig.load(path)
        except (ValueError, TypeError, AttributeError) as error:
            raise CovidXrayError(f"{path}: not a covidxray run configuration ({error}); retrain the run") from None
        if not config.image_size:  # a run writes its settings resolved
            raise CovidXrayError(f"{path}: not a valid covidxray run configuration: no image_size; retrain the run")
        return config

    def load_runtime(self):
        """How the run computed (:class:`~covidxray.config.Runtime`), as its ``config.json`` records it."""
        from covidxray.config import Runtime

        path = self.require(CONFIG)
        try:
            return Runtime.load(path)
        except (ValueError, TypeError, AttributeError) as error:
            raise CovidXrayError(f"{path}: not a covidxray run configuration ({error}); retrain the run") from None

    def read_split(self, columns: tuple[str, ...] = ("path", "split")):
        """``split.csv`` as a table of strings, checked: its ``columns``, and splits that are train,
        validation or test."""
        import pandas as pd

        path = self.require(SPLIT)
        fix = "restore the run's own split.csv or retrain the run"
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (ValueError, OSError) as error:  # pandas' parser and empty-file errors are ValueErrors
            raise CovidXrayError(f"{path}: unreadable ({' '.join(str(error).split())}); {fix}") from None
        missing = [c for c in dict.fromkeys((*columns, "split")) if c not in table.columns]
        if missing:
            raise CovidXrayError(f"{path}: no {' or '.join(repr(c) for c in missing)} column, so not a covidxray "
                                 f"split; {fix}")
        unknown = sorted(set(table["split"]) - set(SPLIT_NAMES))
        if unknown:
            raise CovidXrayError(f"{path}: unknown split {unknown[0]!r} (a split is one of "
                                 f"{', '.join(SPLIT_NAMES)}); {fix}")
        return table

    def check_same_split(self, table, where) -> None:
        """Raise a :class:`~covidxray.errors.DatasetError` unless ``table`` (the images read again to
        resume the run, ``where``: the datasets named) lists the images of ``split.csv`` in the same
        order and split."""
        saved = self.read_split()
        if list(saved["path"]) != list(table["path"]) or list(saved["split"]) != list(table["split"]):
            raise DatasetError(f"{where}: the images differ from those in {self.file(SPLIT)}; "
                               "resume needs the same datasets (or start a new run)")

    def complete(self, metrics: dict) -> Path:
        """Write ``metrics.json``, the file whose presence marks the run complete (so last), then
        drop the backup an interrupted fit would have resumed from."""
        path = self.write_json(METRICS, metrics)
        shutil.rmtree(self.file(BACKUP), ignore_errors=True)
        return path

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
