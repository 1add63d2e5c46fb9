"""covidxray.training.train: the library's train and resume (the command line's are in tests/e2e)."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

import covidxray.training.train as train_module
from covidxray import rundir
from covidxray.config import RUNTIME, Runtime, TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.training.train import resume, train
from helpers import cut_after_epoch, make_dataset


@pytest.fixture
def config(tiny_model, fast_bootstrap, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8)
    return TrainConfig(data=str(data), model=tiny_model, epochs=2, batch_size=8, seed=1, augment=False)


def test_train_writes_a_complete_run_and_refuses_to_replace_it(config, tmp_path):
    out = tmp_path / "run"
    metrics = train(config, out, verbose=0)
    assert json.loads((out / rundir.METRICS).read_text()) == json.loads(json.dumps(metrics))
    for name in (rundir.MODEL, rundir.CONFIG, rundir.SPLIT, rundir.HISTORY, rundir.CALIBRATION, rundir.REPORT,
                 rundir.REPORT_HTML, rundir.ACC_FIGURE, rundir.MATRIX_FIGURE, rundir.PREDICTIONS_FIGURE,
                 rundir.RELIABILITY_FIGURE):
        assert (out / name).is_file(), name
    assert not (out / rundir.BACKUP).exists()
    info = metrics["run"]
    assert info["model"] == "tiny" and info["image_size"] == 32 and info["epochs_run"] == 2 and not info["resumed"]
    assert info["images"] == pd.read_csv(out / rundir.SPLIT)["split"].value_counts().to_dict()
    assert sum(info["images"].values()) == 24 and info["sources"] == {"synthetic": 24}
    assert metrics["calibration"]["temperature"] == json.loads((out / rundir.CALIBRATION).read_text())["temperature"]
    assert set(metrics["calibration"]) >= {"validation", "test", "temperature", "covid_threshold", "fitted_temperature",
                                          "temperature_kept", "keep_margin"}
    kept = metrics["calibration"]["temperature_kept"]  # the temperature applied: the fitted one where kept, else 1
    assert metrics["calibration"]["temperature"] == (metrics["calibration"]["fitted_temperature"] if kept else 1.0)
    assert ("**Kept**" if kept else "**Not kept**") in (out / rundir.REPORT).read_text()
    assert TrainConfig.load(out / rundir.CONFIG) == config.resolve()
    with pytest.raises(CovidXrayError, match="already holds a trained run"):
        train(config, out, verbose=0)
    with pytest.raises(CovidXrayError, match="the run is complete"):
        resume(out, verbose=0)


def test_an_interrupted_run_resumes_with_its_own_settings(config, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "evaluate_splits", interrupt)  # stop right after fitting
        with pytest.raises(KeyboardInterrupt):
            train(config, out, verbose=0)
    assert (out / rundir.BACKUP).is_dir() and not (out / rundir.METRICS).exists()
    with pytest.raises(CovidXrayError, match="holds an interrupted run; continue it with covidxray train --resume"):
        train(config, out, verbose=0)
    with pytest.raises(CovidXrayError, match=r"a resumed run keeps its own settings, but --epochs 5 \(the run has 2\)"):
        resume(out, epochs=5, verbose=0)
    metrics = resume(out, seed=1, cache_dir=str(tmp_path / "other-cache"), verbose=0)  # same seed: fine
    assert metrics["run"]["resumed"] and metrics["run"]["epochs_run"] == 2
    assert list(pd.read_csv(out / rundir.HISTORY)["epoch"]) == [0, 1]  # not trained again
    assert not (out / rundir.BACKUP).exists()


def test_config_json_records_the_runtime_and_a_resumed_run_computes_with_it(config, tmp_path, monkeypatch):
    out = tmp_path / "run"
    used = []
    fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda c, d, r, runtime, **kw: used.append(runtime) or fit(c, d, r, runtime,
                                                                                                        **kw))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "evaluate_splits", interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(config, out, runtime=Runtime(mixed_precision="mixed_bfloat16", cache_dir=str(tmp_path / "c")),
                  verbose=0)
    stored = json.loads((out / rundir.CONFIG).read_text())
    assert stored[RUNTIME] == {"mixed_precision": "mixed_bfloat16", "jit_compile": "auto", "steps_per_execution": 1,
                               "devices": 1, "cache_dir": str(tmp_path / "c")}
    with pytest.raises(CovidXrayError, match=r"keeps its own settings, but --mixed-precision float32 \(the run has "
                                             r"mixed_bfloat16\)"):
        resume(out, mixed_precision="float32", verbose=0)
    (out / rundir.CONFIG).write_text(json.dumps({**stored, "weight_decay": 0.05}))  # the former --weight-decay
    with pytest.raises(CovidXrayError, match="the run trained with weight decay 0.05, but --lr-schedule cosine now "
                                             "implies 0 .*cannot be resumed"):
        resume(out, verbose=0)
    (out / rundir.CONFIG).write_text(json.dumps(stored))
    metrics = resume(out, verbose=0)
    assert used[-1] == used[0] and used[-1].mixed_precision == "mixed_bfloat16"  # the stored runtime, not the default
    assert metrics["run"]["mixed_precision"] == "mixed_bfloat16"
    assert "computing in `mixed_bfloat16`" in (out / rundir.REPORT).read_text()


def test_resume_needs_a_run_with_a_backup(tmp_path):
    with pytest.raises(CovidXrayError, match="no such run directory to resume"):
        resume(tmp_path / "nothing")
    (tmp_path / "config.json").write_text(json.dumps({"data": "d"}))
    with pytest.raises(CovidXrayError, match="no backup to resume from"):
        resume(tmp_path)


# --- replacing a folder's contents (issue 12, 1 and 2) -----------------------------------------

USER_FILES = {".env.tmpl": "SECRET=1", "config.json": '{"theme": "dark"}', "report.md": "# my report",
              "report.html": "<p>mine</p>", "history.csv": "year,event", "notes.txt": "mine"}


def _user_folder(folder):
    folder.mkdir(parents=True)
    for name, text in USER_FILES.items():
        (folder / name).write_text(text)
    (folder / ".build.tmp_files").mkdir()
    (folder / ".build.tmp_files" / "x.o").write_text("mine")
    return folder


def _contents(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_that_is_not_a_run_is_left_alone_without_overwrite(config, tmp_path):
    out = _user_folder(tmp_path / "mine")
    before = _contents(out)
    with pytest.raises(CovidXrayError, match="mine: not empty and not a covidxray run .*pass --overwrite"):
        train(config, out, verbose=0)
    assert _contents(out) == before
    train(config, out, overwrite=True, verbose=0)  # asked for: the run's files replace theirs
    after = _contents(out)
    for kept in (".env.tmpl", ".build.tmp_files/x.o", "notes.txt"):
        assert after[kept] == before[kept], kept
    assert TrainConfig.load(out / rundir.CONFIG) == config.resolve() and (out / rundir.METRICS).is_file()
    assert not (out / rundir.STAGED).exists() and not (out / rundir.REPLACED).exists()


def test_overwrite_keeps_the_finished_run_until_the_new_one_is_complete(config, tmp_path, monkeypatch):
    import keras

    from covidxray.models import create_model

    out = tmp_path / "run"
    train(config, out, verbose=0)
    (out / "notes.txt").write_text("mine")
    finished = _contents(out)
    # a weights file of another task: 2 outputs, the new run has 3
    keras.utils.set_random_seed(0)
    binary = tmp_path / "binary.weights.h5"
    create_model("tiny", num_classes=2, image_size=32, augment=False).save_weights(binary)
    with pytest.raises(CovidXrayError, match="weights do not fit"):
        train(replace(config, weights=str(binary)), out, overwrite=True, verbose=0)
    assert _contents(out) == finished  # checked before anything was removed

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "evaluate_splits", interrupt)  # stop right after fitting the new run
        with pytest.raises(KeyboardInterrupt):
            train(replace(config, seed=2), out, overwrite=True, verbose=0)
    assert {k: v for k, v in _contents(out).items() if not k.startswith(rundir.STAGED)} == finished
    with pytest.raises(CovidXrayError, match="holds an interrupted run .started with --overwrite"):
        train(config, out, verbose=0)
    metrics = resume(out, verbose=0)  # continues the replacement, then swaps it in
    assert metrics["run"]["resumed"] and TrainConfig.load(out / rundir.CONFIG).seed == 2
    assert json.loads((out / rundir.METRICS).read_text())["run"]["resumed"]
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []

    with monkeypatch.context() as patch:  # a failure before the first epoch: nothing to resume, no trace left
        patch.setattr(train_module, "fit", lambda *args, **kwargs: (_ for _ in ()).throw(MemoryError()))
        replaced = _contents(out)
        with pytest.raises(MemoryError):
            train(config, out, overwrite=True, verbose=0)
    assert _contents(out) == replaced


# --- familiarity: is an X-ray like the training data? ------------------------------------------


def _checkerboard(side: int, square: int = 1):
    import numpy as np

    cells = (np.indices((side, side)) // square).sum(axis=0) % 2
    return np.where(cells == 0, 255, 0).astype(np.uint8)


def test_train_fits_the_runs_familiarity_and_reports_it(config, tmp_path):
    import numpy as np

    from covidxray.data.images import decode_resized
    from covidxray.inference.familiarity import Familiarity
    from covidxray.inference.predictor import load_predictor
    from covidxray.rundir import FAMILIARITY

    out = tmp_path / "run"
    metrics = train(config, out, verbose=0)
    assert (out / FAMILIARITY).is_file()
    stored = json.loads((out / rundir.METRICS).read_text())
    unlike = stored["unlike_training"]
    assert unlike == json.loads(json.dumps(metrics["unlike_training"]))
    split = pd.read_csv(out / rundir.SPLIT)
    test_paths = split.loc[split["split"] == "test", "path"].tolist()
    assert unlike["share"] == 0.10 and 0 < unlike["min_probability"] < 1
    assert unlike["test"]["images"] == len(test_paths) == stored["run"]["images"]["test"] == stored["test"]["n"]
    assert 0 <= unlike["test"]["unlike"] <= unlike["test"]["images"]
    assert unlike["test"]["share_unlike"] == pytest.approx(unlike["test"]["unlike"] / unlike["test"]["images"])
    assert unlike["test"]["accuracy_all"] == pytest.approx(stored["test"]["accuracy"])
    familiarity = Familiarity.load(out)
    assert unlike["threshold"] == familiarity.threshold and np.isfinite(familiarity.threshold)
    report = (out / rundir.REPORT).read_text()
    assert "## Unlike the training data" in report
    assert f"flags {unlike['test']['unlike']} of {unlike['test']['images']} images" in report

    predictor = load_predictor(out)
    assert predictor.familiarity is not None
    np.testing.assert_array_equal(predictor.familiarity.precision, familiarity.precision)
    decoded = [decode_resized(path, predictor.decode_side) for path in test_paths]
    inputs = predictor.prepare(np.stack([image for image, _ in decoded]), [digest for _, digest in decoded]).images
    flags = predictor.unlike_training(inputs)
    assert isinstance(flags, np.ndarray) and flags.dtype == bool and flags.shape == (len(test_paths),)
    assert int(flags.sum()) == unlike["test"]["unlike"]  # the same images, read as predict reads them

    side = predictor.image_size
    board = _checkerboard(side)[None, ..., None]
    assert predictor.unlike_training(board).tolist() == [True]
    assert predictor.unlike_training(np.concatenate([board, inputs[:2]])).tolist() == [True, *flags[:2].tolist()]
    # the same board, read from a file as predict reads it (squares of 2 px at twice the model's size)
    path = tmp_path / "board.png"
    from PIL import Image

    Image.fromarray(_checkerboard(2 * side, 2)).save(path)
    image, digest = decode_resized(path, predictor.decode_side)
    assert predictor.unlike_training(predictor.prepare(image[None], [digest]).images).tolist() == [True]

    (out / FAMILIARITY).unlink()  # a run trained before familiarity: nothing flagged, no error
    assert load_predictor(out).familiarity is None and load_predictor(out).unlike_training(board) is None


# --- no validation split (--val-fraction 0, as DarkCovidNet's paper trains) ----------------------


def test_a_run_without_validation_fits_every_training_image_and_keeps_its_last_epoch(config, tmp_path):
    from covidxray.models import load_model
    from covidxray.rundir import FAMILIARITY

    out = tmp_path / "run"
    metrics = train(replace(config, val_fraction=0.0, epochs=3, patience=0), out, verbose=0)
    split = pd.read_csv(out / rundir.SPLIT)
    assert set(split["split"]) == {"train", "test"}
    assert metrics["run"]["images"] == {**split["split"].value_counts().to_dict(), "validation": 0}
    assert "validation" not in metrics and metrics["train"]["n"] == (split["split"] == "train").sum()
    # every epoch runs (patience 0 would stop a validated run) and the last one's model is kept
    assert metrics["run"]["epochs_run"] == 3 and metrics["run"]["best_epoch"] == 3
    history = pd.read_csv(out / rundir.HISTORY)
    assert len(history) == 3 and not any(c.startswith("val_") for c in history.columns)
    # the model saved is the one scored: the last epoch's, batch norm recalibrated
    model = load_model(out / rundir.MODEL)
    assert metrics["run"]["parameters"] == model.count_params()
    calibration = json.loads((out / rundir.CALIBRATION).read_text())
    assert calibration["temperature"] == 1.0 and calibration["covid_threshold"] is None
    assert metrics["calibration"]["temperature"] == 1.0 and set(metrics["calibration"]) >= {"test"}
    assert "validation" not in metrics["calibration"]
    assert metrics["unlike_training"] is None and not (out / FAMILIARITY).exists()
    report = (out / rundir.REPORT).read_text()
    assert "the last epoch's model kept (3 run; no validation split)" in report
    assert "No validation split to fit temperature scaling on" in report
    assert "probabilities are the model's own (see Calibration)" in report
    assert "Training accuracy and loss per epoch" in report
    assert "| validation |" not in report and "## Unlike the training data" not in report
    with pytest.raises(CovidXrayError, match="the run is complete"):
        resume(out, verbose=0)


def test_a_run_without_validation_resumes_to_its_last_epoch(config, tmp_path):
    out = tmp_path / "run"
    settings = replace(config, val_fraction=0.0, epochs=3)
    with cut_after_epoch(1):
        train(settings, out, verbose=0)
    assert len(pd.read_csv(out / rundir.HISTORY)) == 2 and not (out / rundir.METRICS).exists()
    metrics = resume(out, verbose=0)
    assert metrics["run"]["resumed"] and metrics["run"]["epochs_run"] == 3 and metrics["run"]["best_epoch"] == 3
    assert list(pd.read_csv(out / rundir.HISTORY)["epoch"]) == [0, 1, 2] and "validation" not in metrics
