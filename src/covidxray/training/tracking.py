"""Experiment tracking beside the run folder: TensorBoard logs in every run, MLflow with ``--track mlflow``.

TensorBoard: Keras's callback writes each epoch's losses, metrics and learning rate into
``RUN/tensorboard/train/`` and ``validation/``
(:func:`covidxray.training.callbacks.tensorboard_callback`); once the report is
written, :func:`write_report_summaries` adds the test scores, the confusion matrix and ``pred.png``
as images in ``RUN/tensorboard/test/``. Both write through ``tf.summary``: they need the tensorflow
and tensorboard packages (``covidxray[tensorflow]``, the default install), whatever the Keras
backend; without them a run writes no TensorBoard logs and says so once.

MLflow (``pip install 'covidxray[mlflow]'``): :class:`MlflowTracker` logs the run's settings, each
epoch's metrics, the final metrics and the report with its figures, through an ``MlflowClient`` (no
global active run), into the store ``MLFLOW_TRACKING_URI`` names (MLflow's own convention), else
``sqlite:///runs/mlflow.db`` with the artifacts in ``runs/mlartifacts/``, under the experiment
``MLFLOW_EXPERIMENT_NAME``, else ``covidxray``. A cross-validation is a parent run with one child
run per fold. :class:`Tracker` is the same interface doing nothing (``--track none``), so callers
never test which they hold. Importing this module imports neither Keras nor MLflow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import time
from pathlib import Path

from covidxray import rundir
from covidxray.config import Tracking
from covidxray.errors import CovidXrayError

log = logging.getLogger(__name__)

MLFLOW_INSTALL = "pip install 'covidxray[mlflow]'"
#: What the SQLite store of ``--track mlflow`` needs: the extra installs them.
MLFLOW_MODULES = ("mlflow", "sqlalchemy", "alembic")
#: The store and artifact folder without MLFLOW_TRACKING_URI, relative to the working folder.
DEFAULT_STORE, DEFAULT_ARTIFACTS = Path("runs") / "mlflow.db", Path("runs") / "mlartifacts"
DEFAULT_EXPERIMENT = "covidxray"
#: The run files logged as artifacts (those a run has).
RUN_ARTIFACTS = (rundir.REPORT, rundir.REPORT_HTML, rundir.METRICS, rundir.CONFIG, rundir.HISTORY, rundir.CALIBRATION,
                 rundir.ACC_FIGURE, rundir.MATRIX_FIGURE, rundir.PREDICTIONS_FIGURE, rundir.RELIABILITY_FIGURE)
#: TensorBoard image tags of the report's figures.
REPORT_IMAGES = {"confusion_matrix": rundir.MATRIX_FIGURE, "predictions": rundir.PREDICTIONS_FIGURE}
#: MLflow run statuses.
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


# -- TensorBoard -----------------------------------------------------------------------------------

#: What writing TensorBoard logs needs: Keras's callback writes with ``tf.summary``, which tensorboard implements.
TENSORBOARD_MODULES = ("tensorflow", "tensorboard")


def tensorboard_available() -> bool:
    """Whether TensorBoard logs can be written (:data:`TENSORBOARD_MODULES` installed)."""
    return all(importlib.util.find_spec(name) is not None for name in TENSORBOARD_MODULES)


def write_report_summaries(run: rundir.RunDir, metrics: dict) -> None:
    """Add the final scores (:func:`final_metrics`) and the confusion matrix and ``pred.png`` as
    images to ``RUN/tensorboard/test/``, at the step of the epoch whose model was kept."""
    if not tensorboard_available():
        return
    import tensorflow as tf

    info = metrics.get("run", {})
    step = max(0, int(info.get("best_epoch") or info.get("epochs_run") or 1) - 1)  # Keras's callback counts from 0
    writer = tf.summary.create_file_writer(str(run.file(rundir.TENSORBOARD) / "test"))
    with writer.as_default(step=step):
        for name, value in final_metrics(metrics).items():
            tf.summary.scalar(name, value)
        for tag, name in REPORT_IMAGES.items():
            if run.file(name).is_file():
                image = tf.image.decode_png(tf.io.read_file(str(run.file(name))), channels=3)
                tf.summary.image(tag, image[None])
    writer.close()


# -- what is logged --------------------------------------------------------------------------------

def final_metrics(metrics: dict) -> dict[str, float]:
    """The scores of a finished run (``metrics.json``) as flat names: accuracy and loss per split, COVID
    sensitivity, specificity and AUC, per-class F1 on the test split, the kept epoch and the time."""
    found = {}
    for split in rundir.SPLIT_NAMES:
        part = metrics.get(split) or {}
        found |= {f"{split}_{key}": part.get(key) for key in ("accuracy", "loss")}
        found |= {f"{split}_covid_{key}": (part.get("covid") or {}).get(key) for key in ("sensitivity", "specificity", "auc")}
    for name, scores in ((metrics.get("test") or {}).get("per_class") or {}).items():
        found[f"test_{name}_f1"] = scores.get("f1")
    found["temperature"] = (metrics.get("calibration") or {}).get("temperature")
    info = metrics.get("run") or {}
    found |= {key: info.get(key) for key in ("best_epoch", "epochs_run", "fit_seconds", "total_seconds")}
    return _numbers(found)


def epoch_metrics(row: dict) -> dict[str, float]:
    """One epoch's logs (a ``history.csv`` row) without the epoch number."""
    return _numbers({k: v for k, v in row.items() if k != "epoch"})


def _numbers(values: dict) -> dict[str, float]:
    kept = {}
    for name, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            kept[name] = float(value)
    return kept


def param_text(value) -> str:
    """A setting as an MLflow parameter: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


# -- trackers --------------------------------------------------------------------------------------

def check_tracking(track: str) -> None:
    """Raise now, before any backend loads, where ``--track`` cannot work: an unknown tracker, or
    MLflow not installed."""
    Tracking(track=track).check()
    missing = [name for name in MLFLOW_MODULES if importlib.util.find_spec(name) is None] if track == "mlflow" else []
    if missing:
        raise CovidXrayError(f"--track mlflow needs MLflow ({', '.join(missing)} not installed): {MLFLOW_INSTALL}")


class Tracker:
    """Tracking that logs nothing (``--track none``); :class:`MlflowTracker` logs. ``start`` opens the
    tracked run (after the command's own checks passed), ``running`` closes it with its outcome."""

    def start(self, name: str, params: dict, tags: dict | None = None) -> None:
        """Open the tracked run ``name`` with the settings ``params``."""

    def child(self) -> Tracker:
        """A tracker whose run is nested in this one's (a cross-validation's fold)."""
        return Tracker()

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numbers, at the epoch ``step`` (counted from 0) or as final values."""

    def log_history(self, rows: list[dict]) -> None:
        """Log epochs already finished (``history.csv`` rows; a resumed run's, a reused fold's)."""
        for row in rows:
            self.log_metrics(epoch_metrics(row), step=int(row["epoch"]))

    def log_files(self, folder: Path, names) -> None:
        """Log the files of ``names`` that ``folder`` holds as artifacts."""

    def finish(self, status: str) -> None:
        """Close the tracked run, if it was opened, as FINISHED, FAILED or KILLED."""

    @contextlib.contextmanager
    def running(self):
        """Close the run on leaving: FINISHED, or FAILED (KILLED on Ctrl-C) with the error raised on."""
        try:
            yield self
        except KeyboardInterrupt:
            self.finish(KILLED)
            raise
        except BaseException:
            self.finish(FAILED)
            raise
        self.finish(FINISHED)


def store_uri() -> str:
    """MLFLOW_TRACKING_URI where set, else the SQLite store ``runs/mlflow.db`` of the working folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.resolve()}"


class MlflowTracker(Tracker):
    """Logs one MLflow run (and its children) through an ``MlflowClient`` of the store ``uri``.

    The client connects when the run starts, so that a command refused by its own checks leaves no run behind."""

    def __init__(self, uri: str | None = None, parent: MlflowTracker | None = None):
        self.uri = uri or store_uri()
        self.parent, self.run_id = parent, None
        self._client = self._experiment = None

    def start(self, name: str, params: dict, tags: dict | None = None) -> None:
        from mlflow.entities import Param

        client = self._connect()
        tags = {**(tags or {}), **({"mlflow.parentRunId": self.parent.run_id} if self.parent else {})}
        self.run_id = client.create_run(self._experiment, run_name=name, tags=tags).info.run_id
        params = [Param(key, param_text(value)) for key, value in params.items()]
        for first in range(0, len(params), 100):  # MLflow takes up to 100 per call
            client.log_batch(self.run_id, params=params[first:first + 100])

    def child(self) -> MlflowTracker:
        return MlflowTracker(self.uri, parent=self)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step or 0) for key, value in _numbers(metrics).items()]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    def log_files(self, folder: Path, names) -> None:
        for name in names:
            if (Path(folder) / name).is_file():
                self._client.log_artifact(self.run_id, str(Path(folder) / name))

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            self._client.set_terminated(self.run_id, status)

    def _connect(self):
        """The client and the experiment's id, made once (a fold's tracker shares its parent's)."""
        if self._client is not None:
            return self._client
        if self.parent is not None:
            self._client, self._experiment = self.parent._connect(), self.parent._experiment
            return self._client
        from mlflow import MlflowClient

        default = self.uri == f"sqlite:///{DEFAULT_STORE.resolve()}"
        if default:
            DEFAULT_STORE.parent.mkdir(parents=True, exist_ok=True)
        with _quiet("mlflow", "alembic"):  # "Creating initial MLflow database tables..."
            client = MlflowClient(tracking_uri=self.uri)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
            experiment = client.get_experiment_by_name(name)
            self._experiment = experiment.experiment_id if experiment else client.create_experiment(
                name, artifact_location=DEFAULT_ARTIFACTS.resolve().as_uri() if default else None)
        self._client = client
        return client


@contextlib.contextmanager
def _quiet(*names: str):
    """Hold the INFO lines of these loggers back (warnings pass) while inside."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def make_tracker(track: str | Tracker = "none") -> Tracker:
    """The tracker of ``--track`` (checked), or ``track`` itself where it is one already (a caller
    that opened the run, and closes it, passes it on)."""
    if isinstance(track, Tracker):
        return track
    check_tracking(track)
    return MlflowTracker() if track == "mlflow" else Tracker()


def closing(tracker: Tracker, track: str | Tracker):
    """Close ``tracker``'s run on leaving (:meth:`Tracker.running`), unless the caller passed it in
    (``track`` is the tracker): then the caller closes it."""
    return contextlib.nullcontext() if tracker is track else tracker.running()


def run_params(config, runtime=None, **more) -> dict:
    """A training run's settings and its resolved runtime (``config.json``) as the tracked run's parameters."""
    return {**config.to_dict(), **(runtime.record() if runtime is not None else {}), **more}


def log_finished_run(tracker: Tracker, run: rundir.RunDir, metrics: dict) -> None:
    """Log a finished run's final scores (:func:`final_metrics`) and its report, figures and files."""
    tracker.log_metrics(final_metrics(metrics))
    tracker.log_files(run.path, RUN_ARTIFACTS)
