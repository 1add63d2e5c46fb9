"""Resumable training: Keras's BackupAndRestore, written atomically, plus covidxray's callback states.

After every epoch the run's ``backup/`` folder is rebuilt beside itself and swapped in whole:

- ``latest.weights.h5`` and ``training_metadata.json``: Keras's own BackupAndRestore files
  (weights, optimizer state with its step count, hence the learning-rate schedule, and the
  epoch), read back by Keras's ``BackupAndRestore.on_train_begin``;
- ``best.keras``: a hard link to (or copy of) the best checkpoint ``model.keras`` as it was
  at that epoch;
- ``state.json``: the history rows, the early stopping and best-checkpoint states, and the
  seconds spent fitting.

Then ``history.csv`` is rewritten from the rows (one line per finished epoch, never a partial
line). A run killed at any point thus resumes from one consistent epoch: on resume the
checkpoint and ``history.csv`` are put back to that epoch's, so an epoch that was cut short
leaves no trace.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import keras

from covidxray import rundir
from covidxray.errors import CovidXrayError
from covidxray.files import atomic_save, atomic_write_dir, recover_dir
from covidxray.training.callbacks import HistoryCsv

# File names Keras's BackupAndRestore reads in the backup folder.
KERAS_WEIGHTS, KERAS_METADATA = "latest.weights.h5", "training_metadata.json"
STATE, BEST = "state.json", "best.keras"


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's early stopping whose counters can be saved and restored."""

    def state(self) -> dict:
        return {"wait": self.wait, "best": None if self.best is None else float(self.best),
                "best_epoch": self.best_epoch}

    def restore(self, state: dict) -> None:
        self.wait, self.best, self.best_epoch = state["wait"], state["best"], state["best_epoch"]


class SeedStates:
    """The states of a model's random-seed generators (augmentation, dropout): Keras's weight
    files leave them out, so without them a resumed run would draw the first epochs' augmentations
    again."""

    def __init__(self, model: keras.Model):
        self.model = model

    def variables(self) -> list:
        weights = {id(v) for v in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def state(self) -> list:
        return [keras.ops.convert_to_numpy(v).tolist() for v in self.variables()]

    def restore(self, state: list) -> None:
        variables = self.variables()
        if len(state) != len(variables):
            raise CovidXrayError(f"the backup holds {len(state)} seed states, the model {len(variables)}; "
                                 "start the run again with --overwrite")
        for variable, value in zip(variables, state):
            variable.assign(keras.ops.convert_to_tensor(value, dtype=variable.dtype))


class RunBackup(keras.callbacks.BackupAndRestore):
    """Back up the training state of a run after every epoch, and restore it when fit starts.

    ``parts`` are covidxray's stateful callbacks (``state()`` / ``restore(state)``); keep this
    callback after them, so that it saves the state they reach at the end of each epoch and
    restores theirs after their own ``on_train_begin`` reset it. ``state``: what
    :func:`read_state` gave for ``run`` before fit (None: a new run), restored when fit starts.
    """

    def __init__(self, run: rundir.RunDir, parts: dict, state: dict | None):
        super().__init__(str(run.file(rundir.BACKUP)), save_freq="epoch", delete_checkpoint=False)
        self.run, self.parts, self.saved = run, parts, state
        self.folder = run.file(rundir.BACKUP)
        self.history_csv = HistoryCsv(run)
        self.fit_seconds, self.stopped = 0.0, False
        self._started = None

    @property
    def history(self) -> list[dict]:
        """The rows of ``history.csv``: one per finished epoch."""
        return self.history_csv.rows

    def on_train_begin(self, logs=None):
        recover_dir(self.folder)
        super().on_train_begin(logs)  # Keras: weights, optimizer state, epoch to start from
        state = self.saved
        if state is not None:
            self.history_csv.rows, self.fit_seconds = list(state["history"]), state["fit_seconds"]
            for name, part in self.parts.items():
                if name in state["parts"]:  # a backup written before a part existed restores without it
                    part.restore(state["parts"][name])
            restore_checkpoint(self.run)
            self.history_csv.write()
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.history_csv.add(epoch, logs)
        self.stopped = bool(self.model.stop_training)
        now = time.perf_counter()
        self.fit_seconds += now - self._started
        self._started = now
        state = {"epoch": epoch + 1, "stopped": self.stopped, "fit_seconds": self.fit_seconds,
                 "history": self.history, "parts": {name: part.state() for name, part in self.parts.items()}}
        atomic_write_dir(self.folder, lambda folder: self._write_backup(folder, epoch, state))
        self.history_csv.write()

    def _write_backup(self, folder: Path, epoch: int, state: dict) -> None:
        self.model.save_weights(str(folder / KERAS_WEIGHTS))
        (folder / KERAS_METADATA).write_text(json.dumps({"epoch": epoch + 1, "batch": 0}))
        best = self.run.file(rundir.MODEL)
        if best.is_file():
            try:
                os.link(best, folder / BEST)  # model.keras is replaced by rename, so the link keeps this version
            except OSError:
                shutil.copyfile(best, folder / BEST)
        (folder / STATE).write_text(json.dumps(state, indent=1) + "\n")


def restore_checkpoint(run: rundir.RunDir) -> None:
    """Put back the best checkpoint ``model.keras`` as the backup's last epoch left it, not as a later
    epoch cut short, or the steps after the fit, changed it."""
    best = run.file(rundir.BACKUP) / BEST
    if best.is_file():
        atomic_save(run.file(rundir.MODEL), lambda tmp: shutil.copyfile(best, tmp))


def read_state(run: rundir.RunDir) -> dict | None:
    """The saved state of an interrupted run, or None where it has no backup."""
    recover_dir(run.file(rundir.BACKUP))
    path = run.file(rundir.BACKUP) / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError as error:
        raise CovidXrayError(f"{path}: unreadable ({error}); start the run again with --overwrite") from None
    kinds = {"epoch": int, "stopped": bool, "fit_seconds": int | float, "history": list, "parts": dict}
    wrong = [key for key, kind in kinds.items() if not isinstance(state, dict) or not isinstance(state.get(key), kind)]
    if wrong:
        raise CovidXrayError(f"{path}: not a covidxray training state (bad or missing {', '.join(wrong)}); "
                             "start the run again with --overwrite")
    return state


def run_to_resume(run_dir, settings: str = rundir.CONFIG, command: str = "covidxray train"
                  ) -> tuple[rundir.RunDir, rundir.RunDir | None]:
    """``(run, staged)``: the run folder ``run_dir``, recovered from an interrupted write, and the
    interrupted replacement inside it (``--overwrite`` cut short, in ``.covidxray-staged/``) or None;
    whichever of the two is to continue is checked by :func:`check_resumable`."""
    run = rundir.RunDir(run_dir)
    if run.path.is_dir():
        run.recover()
    staged = run.interrupted_replacement()
    check_resumable(staged or run, settings, command)
    return run, staged


def refuse_changes(path, conflicts: list[str]) -> None:
    """A resumed run keeps its own settings: raise an error naming ``conflicts`` (the settings given
    that differ from those in the run's file ``path``), if any."""
    if conflicts:
        raise CovidXrayError(f"{path}: a resumed run keeps its own settings, but {'; '.join(conflicts)}; drop these "
                             "or start a new run")


def check_resumable(run: rundir.RunDir, settings: str = rundir.CONFIG, command: str = "covidxray train") -> dict:
    """The state to resume ``run`` from, or a clear error saying why it cannot be resumed. ``settings``:
    the file holding the run's settings (a lung segmenter's: ``segmenter.json``), written by ``command``."""
    if not run.path.is_dir():
        raise CovidXrayError(f"{run.path}: no such run directory to resume")
    if run.file(rundir.METRICS).is_file():
        raise CovidXrayError(f"{run.path}: the run is complete (metrics.json is written); nothing to resume")
    run.require(settings)
    state = read_state(run)
    if state is None:
        raise CovidXrayError(
            f"{run.path}: no backup to resume from (it stopped before finishing its first epoch); "
            f"start it again with {command} --out {run.path} --overwrite"
        )
    return state
