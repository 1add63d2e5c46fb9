"""covidxray.training.tracking: TensorBoard logs in every run, and MLflow (``--track mlflow``) in a
local SQLite store, for train, resume and cv."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import covidxray.training.train as train_module
from covidxray import rundir
from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.training.cv import CV_JSON, CV_REPORT, cross_validate
from covidxray.training.tracking import (
    DEFAULT_ARTIFACTS,
    DEFAULT_STORE,
    FAILED,
    FINISHED,
    KILLED,
    MLFLOW_INSTALL,
    MlflowTracker,
    check_tracking,
    make_tracker,
)
from covidxray.training.train import resume, train
from helpers import make_dataset

mlflow = pytest.importorskip("mlflow", reason="pip install 'covidxray[mlflow]'")
pytest.importorskip("tensorflow", reason="TensorBoard logs need tensorflow")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local SQLite MLflow store in tmp_path, named as users name theirs (MLFLOW_TRACKING_URI); run from
    tmp_path, where MLflow puts the artifacts of such a store (./mlruns)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return mlflow.MlflowClient(tracking_uri=uri)


@pytest.fixture
def config(tiny_model, fast_bootstrap, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8)
    return TrainConfig(data=str(data), model=tiny_model, epochs=2, batch_size=8, seed=1, augment=False)


def runs_of(client, **tags) -> list:
    """The runs of the experiment covidxray logs to, oldest first, with these tags."""
    experiment = client.get_experiment_by_name("covidxray")
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return sorted(client.search_runs([experiment.experiment_id], filter_string=query),
                  key=lambda r: r.info.start_time)


def history(client, run, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def tensorboard_logs(folder, plugin: str) -> dict[str, list]:
    """The summaries of one TensorBoard plugin (scalars, images) in a log folder, by tag, read back
    with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    return {tag: events.Tensors(tag) for tag in events.Tags()["tensors"]
            if events.SummaryMetadata(tag).plugin_data.plugin_name == plugin}


def scalars(folder) -> dict[str, dict[int, float]]:
    import tensorflow as tf

    return {tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in found}
            for tag, found in tensorboard_logs(folder, "scalars").items()}


def test_a_run_writes_tensorboard_logs_and_logs_to_mlflow(config, store, tmp_path):
    out = tmp_path / "run"
    metrics = train(config, out, verbose=0, track="mlflow")
    logs = out / rundir.TENSORBOARD
    train_scalars, validation = scalars(logs / "train"), scalars(logs / "validation")
    epochs = pd.read_csv(out / rundir.HISTORY)
    assert sorted(train_scalars["epoch_loss"]) == [0, 1] and sorted(validation["epoch_loss"]) == [0, 1]
    assert train_scalars["epoch_loss"][1] == pytest.approx(epochs["loss"][1], rel=1e-5)
    assert validation["epoch_loss"][1] == pytest.approx(epochs["val_loss"][1], rel=1e-5)
    assert validation["epoch_accuracy"][1] == pytest.approx(epochs["val_accuracy"][1], rel=1e-5)
    assert train_scalars["epoch_learning_rate"][1] == pytest.approx(epochs["learning_rate"][1], rel=1e-5)
    assert epochs["learning_rate"][0] > 0  # the warm-up's end
    test = scalars(logs / "test")
    kept = metrics["run"]["best_epoch"] - 1
    assert test["test_accuracy"] == {kept: pytest.approx(metrics["test"]["accuracy"])}
    images = tensorboard_logs(logs / "test", "images")
    assert sorted(images) == ["confusion_matrix", "predictions"]
    assert [e.step for e in images["predictions"]] == [kept]
    width, height, png = images["confusion_matrix"][0].tensor_proto.string_val  # TensorBoard's image summary
    assert png.startswith(b"\x89PNG") and int(width) > 100 and int(height) > 100

    [run] = runs_of(store)
    assert run.info.status == FINISHED and run.info.run_name == "run"
    assert run.data.tags["covidxray.run_dir"] == str(out.resolve())
    assert run.data.params["model"] == "tiny" and run.data.params["epochs"] == "2"
    assert run.data.params["classes"] == '["covid", "normal", "pneumonia"]'
    assert history(store, run, "loss") == pytest.approx(dict(enumerate(epochs["loss"])))
    assert history(store, run, "val_accuracy") == pytest.approx(dict(enumerate(epochs["val_accuracy"])))
    assert sorted(history(store, run, "learning_rate")) == [0, 1]
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.metrics["test_covid_auc"] == pytest.approx(metrics["test"]["covid"]["auc"])
    assert run.data.metrics["best_epoch"] == metrics["run"]["best_epoch"]
    artifacts = {f.path for f in store.list_artifacts(run.info.run_id)}
    assert {rundir.REPORT, rundir.REPORT_HTML, rundir.METRICS, rundir.MATRIX_FIGURE, rundir.PREDICTIONS_FIGURE,
            rundir.ACC_FIGURE} <= artifacts
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlruns"))  # where MLflow puts them: not in the repository


def test_a_resumed_run_is_a_new_tracked_run_with_every_epoch(config, store, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "evaluate_splits", interrupt)  # stop right after fitting
        with pytest.raises(KeyboardInterrupt):
            train(config, out, verbose=0, track="mlflow")
    resume(out, verbose=0, track="mlflow")
    first, second = runs_of(store)
    assert first.info.status == KILLED and second.info.status == FINISHED
    assert second.data.tags["covidxray.resumed"] == "true"
    assert sorted(history(store, second, "loss")) == [0, 1]  # restored from the backup: fit had nothing left to run
    assert "test_accuracy" in second.data.metrics and "test_accuracy" not in first.data.metrics


def test_a_probe_is_one_tracked_run_with_its_summary(config, store, tmp_path):
    from covidxray.training.probe import probe

    metrics = probe(replace(config, epochs=1), tmp_path / "probe", verbose=0, track="mlflow")
    [run] = runs_of(store)  # train's run, kept open by the probe for its own scores
    assert run.info.status == FINISHED and run.data.params["blank_fraction"] == "0.75"
    assert run.data.metrics["chance_accuracy"] == pytest.approx(metrics["probe"]["chance_accuracy"])
    report = Path(store.download_artifacts(run.info.run_id, rundir.REPORT, str(tmp_path)))
    assert "## Shortcut probe" in report.read_text()  # the report rewritten with the probe's summary


def test_cv_is_a_parent_run_with_a_child_run_per_fold(tiny_model, fast_bootstrap, store, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8, classes=("covid", "normal"))
    config = TrainConfig.for_command("cv", data=str(data), task="binary", model=tiny_model, epochs=1, batch_size=8,
                                     seed=2, augment=False)
    result = cross_validate(config, tmp_path / "cv", 2, verbose=0, track="mlflow")
    parents = runs_of(store, **{"covidxray.command": "cv"})
    [parent] = parents
    assert parent.info.status == FINISHED and parent.data.params["folds"] == "2"
    assert parent.data.metrics["mean_accuracy"] == pytest.approx(result["mean"]["accuracy"])
    assert parent.data.metrics["pooled_accuracy"] == pytest.approx(result["pooled"]["accuracy"])
    assert {CV_JSON, CV_REPORT, "cv_mat.png"} <= {f.path for f in store.list_artifacts(parent.info.run_id)}
    children = runs_of(store, **{"mlflow.parentRunId": parent.info.run_id})
    assert [c.data.params["fold"] for c in children] == ["1", "2"]
    for child, fold in zip(children, result["per_fold"]):
        assert child.info.status == FINISHED and child.data.metrics["test_accuracy"] == pytest.approx(fold["accuracy"])
        assert sorted(history(store, child, "loss")) == [0]
        assert rundir.METRICS in {f.path for f in store.list_artifacts(child.info.run_id)}
    assert scalars(tmp_path / "cv" / "fold-1" / rundir.TENSORBOARD / "train")["epoch_loss"].keys() == {0}

    (tmp_path / "cv" / CV_JSON).unlink()  # as if stopped before pooling: the folds are reused, and tracked again
    cross_validate(config, tmp_path / "cv", 2, verbose=0, track="mlflow")
    _, again = runs_of(store, **{"covidxray.command": "cv"})
    reused = runs_of(store, **{"mlflow.parentRunId": again.info.run_id})
    assert len(reused) == 2 and history(store, reused[0], "loss") == history(store, children[0], "loss")


def test_the_default_store_is_runs_mlflow_db_and_a_failed_run_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    tracker = make_tracker("mlflow")
    assert isinstance(tracker, MlflowTracker) and not DEFAULT_STORE.exists()  # nothing made before start
    with pytest.raises(RuntimeError), tracker.running():
        tracker.start("broken", {"epochs": 3, "data": ["a", "b"]})
        tracker.log_metrics({"loss": 0.5, "auc": float("nan"), "best_epoch": None}, step=0)
        tracker.log_files(tmp_path, ["notes.txt"])  # not there: skipped
        raise RuntimeError("training failed")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / DEFAULT_STORE}")
    [run] = runs_of(client)
    assert run.info.status == FAILED and run.data.params == {"epochs": "3", "data": '["a", "b"]'}
    assert run.data.metrics == {"loss": 0.5}  # numbers only
    assert run.info.artifact_uri.startswith((tmp_path / DEFAULT_ARTIFACTS).as_uri())


def test_track_mlflow_without_mlflow_fails_at_once(monkeypatch):
    check_tracking("mlflow")  # installed here
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(CovidXrayError, match=re.escape(f"needs MLflow (mlflow not installed): {MLFLOW_INSTALL}")):
        check_tracking("mlflow")
    check_tracking("none")
    with pytest.raises(CovidXrayError, match="--track must be one of none, mlflow; got 'wandb'"):
        make_tracker("wandb")
