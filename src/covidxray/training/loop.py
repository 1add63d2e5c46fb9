"""The run loop of both trainers, the classifier's (:mod:`covidxray.training.fit`) and the lung U-Net's
(:mod:`covidxray.training.segmentation`): one ``model.fit`` with the best-epoch checkpoint
(``model.keras``), optional early stopping, the learning-rate log, TensorBoard, the tracker
(``--track``) and the backup of every finished epoch (``backup/``, which also writes ``history.csv``),
from which an interrupted fit resumes (:mod:`covidxray.training.backup`)."""

from __future__ import annotations

import keras

from covidxray import rundir
from covidxray.training.backup import EarlyStopping, RunBackup, SeedStates, read_state, restore_checkpoint
from covidxray.training.batches import fit_arrays
from covidxray.training.callbacks import BestCheckpoint, LearningRateLog, TrackEpochs, tensorboard_callback
from covidxray.training.tracking import Tracker


class RunLoop:
    """The fit of the run folder ``run``: ``epochs`` in all, the best epoch by ``monitor`` (higher is
    better) kept in ``model.keras``, or the last one without ``has_validation``.

    ``patience``: stop after that many epochs without a better ``monitor``, watched from the middle of
    training on (None, or no validation: every epoch runs). Where ``run`` holds the backup of an
    interrupted fit (``state``, read when the loop is made), :meth:`fit` continues from its last
    finished epoch, and a fit that had ended only returns what it saved.
    """

    def __init__(self, run: rundir.RunDir, *, epochs: int, monitor: str, has_validation: bool = True,
                 patience: int | None = None):
        self.run, self.epochs, self.monitor = run, epochs, monitor
        self.has_validation, self.patience = has_validation, patience
        self.state = read_state(run)

    def fit(self, trainer: keras.Model, train, *, saved: keras.Model | None = None, callbacks=(), parts=None,
            tracker: Tracker | None = None, verbose: int = 1, **fit_args) -> dict:
        """Fit the compiled ``trainer`` for the epochs left; returns the ``history`` (``history.csv``'s
        rows, the epochs before a resume included), the ``fit_seconds`` and the ``best_epoch``
        (from 1).

        ``train``: a ``keras.utils.PyDataset`` (started at the epoch the fit resumes from by its
        ``start_at(epoch)`` where it has one), or in-memory ``(images, labels)`` for
        :func:`~covidxray.training.batches.fit_arrays`. ``fit_args`` go to ``model.fit`` (a
        PyDataset: e.g. ``validation_data``; ``shuffle`` False unless given: the PyDataset shuffles)
        or to ``fit_arrays`` (arrays: ``batch_size``, ``class_weight``, ``seed``). ``saved``: the
        model the checkpoint saves (default ``trainer``). ``callbacks``: the trainer's own, run first at each epoch's end, so that the
        scores they add to the logs are those the checkpoint, early stopping, history and tracker
        see. ``parts``: more states to back up (``state()``/``restore(state)``), such as a
        PyDataset's random draws.
        """
        tracker = tracker or Tracker()
        checkpoint = BestCheckpoint(self.run.file(rundir.MODEL), classifier=saved, keep_last=not self.has_validation,
                                    monitor=self.monitor)
        watched = {}
        if self.has_validation and self.patience is not None:  # without validation the last epoch is kept
            # Watched from the middle on: the first half of the cosine schedule explores at a high
            # learning rate and validation scores are noisy there. Measured on DarkCovidNet: a run
            # stopped at epoch 17 of 30 on its epoch-7 best (73% validation accuracy); runs that
            # went the full 30 epochs peaked at epochs 20-28 with 79-82%.
            watched["early_stopping"] = EarlyStopping(monitor=self.monitor, mode="max", patience=self.patience,
                                                      start_from_epoch=self.epochs // 2)
        state = self.state
        backup = RunBackup(self.run, {"checkpoint": checkpoint, **watched, "seeds": SeedStates(trainer),
                                      **(parts or {})}, state)
        tracker.log_history([] if state is None else state["history"])  # a resumed run's epochs so far
        if state is not None and (state["stopped"] or state["epoch"] >= self.epochs):  # it had ended
            restore_checkpoint(self.run)
            return {"history": state["history"], "fit_seconds": state["fit_seconds"],
                    "best_epoch": state["parts"]["checkpoint"]["best_epoch"]}
        tensorboard = tensorboard_callback(self.run)
        callbacks = [
            *callbacks,
            LearningRateLog(),
            checkpoint,
            *watched.values(),
            *([] if tensorboard is None else [tensorboard]),
            TrackEpochs(tracker),
            backup,  # last: saves the states the others reach at each epoch's end, and writes history.csv
        ]
        done = 0 if state is None else state["epoch"]  # a resumed run draws the order of the epochs it has left
        if isinstance(train, keras.utils.PyDataset):
            if hasattr(train, "start_at"):
                train.start_at(done)
            trainer.fit(train, epochs=self.epochs, callbacks=callbacks, verbose=verbose, **{"shuffle": False, **fit_args})
        else:
            x, y = train
            fit_arrays(trainer, x, y, epochs=self.epochs, callbacks=callbacks, verbose=verbose, skip_epochs=done,
                       **fit_args)
        return {"history": backup.history, "fit_seconds": backup.fit_seconds, "best_epoch": checkpoint.best_epoch}
