"""covidxray.training.cv, through the library: folds trained and pooled (the command line: tests/e2e/test_cli_cv.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.rundir import TEST_PREDICTIONS
from covidxray.training.cv import CV_JSON, _mean_sd, cross_validate
from helpers import make_dataset


def test_two_folds_test_every_image_once(tiny_model, fast_bootstrap, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8, classes=("covid", "normal"))
    config = TrainConfig.for_command("cv", data=str(data), task="binary", model=tiny_model, epochs=1, batch_size=8,
                                     seed=2, augment=False)
    result = cross_validate(config, tmp_path / "cv", 2, verbose=0)
    assert result["protocol"] == {"folds": 2, "group_by": "patient", "seed": 2, "images": 16, "patients": 8}
    tested = pd.concat([pd.read_csv(tmp_path / "cv" / f"fold-{k}" / TEST_PREDICTIONS) for k in (1, 2)])
    assert len(tested) == 16 and tested["path"].is_unique  # every image tested once
    # the pooled metrics are those of the folds' own test predictions, pooled
    assert result["pooled"]["n"] == 16 and np.sum(result["pooled"]["confusion_matrix"]) == 16
    per_fold = [f["accuracy"] * f["images"] for f in result["per_fold"]]
    assert result["pooled"]["accuracy"] == pytest.approx(sum(per_fold) / 16)
    assert json.loads((tmp_path / "cv" / CV_JSON).read_text())["per_fold"] == result["per_fold"]
    with pytest.raises(CovidXrayError, match="already holds a finished cross-validation"):
        cross_validate(config, tmp_path / "cv", 2, verbose=0)


def test_bad_folds_fail_before_anything_is_written(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6, classes=("covid", "normal"))  # 3 patients per class
    with pytest.raises(CovidXrayError, match="class 'covid' has 3 patients, fewer than --folds 5"):
        cross_validate(TrainConfig(data=str(data), task="binary", image_size=32), tmp_path / "o", 5)
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(CovidXrayError, match="is a file, not a folder"):
        cross_validate(TrainConfig(data=str(data), task="binary", image_size=32), tmp_path / "file", 2)


def test_mean_and_sd_over_the_folds_that_have_the_metric():
    folds = [{"auc": 0.8}, {"auc": None}, {"auc": 0.6}, {"auc": 0.7}]
    mean, sd = _mean_sd(folds, "auc")
    assert mean == pytest.approx(0.7) and sd == pytest.approx(0.1)  # sample sd (ddof=1) of 0.8, 0.6, 0.7
    assert _mean_sd([{"auc": 0.9}], "auc") == (0.9, 0.0)
    assert _mean_sd([{"auc": None}], "auc") == (None, None)


@pytest.fixture
def cv_config(tiny_model, fast_bootstrap, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8, classes=("covid", "normal"))
    return TrainConfig.for_command("cv", data=str(data), task="binary", model=tiny_model, epochs=2, batch_size=8,
                                   seed=2, augment=False)


def test_a_folder_that_is_not_a_cross_validation_is_left_alone(cv_config, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / ".env.tmpl").write_text("mine")
    with pytest.raises(CovidXrayError, match=r"mine: not empty and not a cross-validation folder \(holds \.env\.tmpl, "
                                             r"notes\.txt\); .*--overwrite"):
        cross_validate(cv_config, out, 2, verbose=0)
    assert sorted(p.name for p in out.iterdir()) == [".env.tmpl", "notes.txt"]


def test_fold_files_that_do_not_read_back_are_trained_again(cv_config, tmp_path, monkeypatch, caplog):
    import covidxray.training.cv as cv_module

    out = tmp_path / "cv"
    first = cross_validate(cv_config, out, 2, verbose=0)
    (out / CV_JSON).unlink()  # as if the command was cut short after its folds
    (out / "fold-1" / "metrics.json").write_text("[]")
    (out / "fold-2" / TEST_PREDICTIONS).write_text("path\nx.png\n")
    trained = []
    real = cv_module._run_fold
    monkeypatch.setattr(cv_module, "_run_fold", lambda *args: trained.append(args[4].path.name) or real(*args))
    with caplog.at_level("WARNING", logger="covidxray"):
        again = cross_validate(cv_config, out, 2, verbose=0)
    assert trained == ["fold-1", "fold-2"] and "its results do not read back" in caplog.text
    assert again["pooled"]["n"] == first["pooled"]["n"] == 16


def test_an_interrupted_fold_continues_from_its_backup(cv_config, tmp_path, monkeypatch):
    import covidxray.training.cv as cv_module
    import covidxray.training.loop as loop_module

    out = tmp_path / "cv"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(cv_module, "evaluate_splits", interrupt)  # fold 1 fitted, then cut short
        with pytest.raises(KeyboardInterrupt):
            cross_validate(cv_config, out, 2, verbose=0)
    assert (out / "fold-1" / "backup").is_dir()
    fitted = []
    real = loop_module.fit_arrays  # the run loop fits
    monkeypatch.setattr(loop_module, "fit_arrays", lambda *args, **kwargs: fitted.append(1) or real(*args, **kwargs))
    result = cross_validate(cv_config, out, 2, verbose=0)
    assert fitted == [1]  # fold 2 only: fold 1 had finished its epochs
    assert result["pooled"]["n"] == 16 and not (out / "fold-1" / "backup").exists()


def _three_sources(root):
    """covid and normal from source A, covid only from B, normal only from C (12 images per class)."""
    data = make_dataset(root, per_class=12, classes=("covid", "normal"))
    manifest = pd.read_csv(data / "manifest.csv")
    number = manifest["path"].str.extract(r"_(\d+)\.png$")[0].astype(int)
    manifest["source"] = np.where(number < 6, "A", np.where(manifest["label"] == "covid", "B", "C"))
    manifest.to_csv(data / "manifest.csv", index=False)
    return data, manifest


def test_leave_one_source_out_tests_each_source_on_a_model_that_never_saw_it(tiny_model, fast_bootstrap, tmp_path):
    data, manifest = _three_sources(tmp_path / "data")
    config = TrainConfig.for_command("cv", data=str(data / "manifest.csv"), task="binary", model=tiny_model, epochs=1,
                                     batch_size=8, seed=2, augment=False, group_by="source")
    result = cross_validate(config, tmp_path / "cv", 5, verbose=0)  # --folds: one per source instead
    assert result["protocol"]["folds"] == 3 and result["protocol"]["held_out_sources"] == ["A", "B", "C"]
    per_fold = {f["held_out"]: f for f in result["per_fold"]}
    assert {s: (f["images"], f["measure"]) for s, f in per_fold.items()} == {
        "A": (12, "auc"), "B": (6, "sensitivity"), "C": (6, "specificity")}
    assert per_fold["B"]["auc"] is None and per_fold["B"]["specificity"] is None
    assert per_fold["B"]["covid_counts"]["tp"] + per_fold["B"]["covid_counts"]["fn"] == 6
    assert set(per_fold["A"]["intervals"]) == {"accuracy", "sensitivity", "specificity", "auc"}
    for k, source in enumerate(("A", "B", "C"), start=1):
        fold = tmp_path / "cv" / f"fold-{k}"
        tested = set(pd.read_csv(fold / TEST_PREDICTIONS)["path"])
        split = pd.read_csv(fold / "split.csv")
        assert tested == set(split.loc[split["split"] == "test", "path"])
        assert set(split.loc[split["split"] == "test", "source"]) == {source}
        assert source not in set(split.loc[split["split"] != "test", "source"])  # the model never saw it
    report = (tmp_path / "cv" / "cv.md").read_text()
    assert "leave-one-source-out (--group-by source)" in report and "## Per held-out source" in report
    assert "| B | 6 | COVID sensitivity (COVID images only) | **" in report


def test_leave_one_source_out_refuses_what_cannot_train_before_writing(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6, classes=("covid", "normal"))  # one source: synthetic
    config = TrainConfig.for_command("cv", data=str(data), task="binary", image_size=32, group_by="source")
    with pytest.raises(CovidXrayError, match="--group-by source needs images from two or more sources; the data has "
                                             "one \\('synthetic'\\)"):
        cross_validate(config, tmp_path / "o", 5)
    manifest = pd.read_csv(data / "manifest.csv")
    manifest["source"] = np.where(manifest["label"] == "covid", "hospital-1", "hospital-2")  # class = source
    manifest.to_csv(data / "manifest.csv", index=False)
    config = TrainConfig.for_command("cv", data=str(data / "manifest.csv"), task="binary", image_size=32,
                                     group_by="source")
    with pytest.raises(CovidXrayError, match="holding out the source 'hospital-1' leaves no 'covid' image to train "
                                             "on: every such image comes from 'hospital-1'"):
        cross_validate(config, tmp_path / "o", 5)
    assert not (tmp_path / "o").exists()


def test_folds_trained_one_at_a_time_are_pooled_once_all_have_finished(cv_config, tmp_path, monkeypatch):
    import covidxray.training.cv as cv_module

    out = tmp_path / "cv"
    with pytest.raises(CovidXrayError, match="--fold 3: this cross-validation has folds 1 to 2"):
        cross_validate(cv_config, out, 2, verbose=0, only=[3])
    assert not out.exists()
    partial = cross_validate(cv_config, out, 2, verbose=0, only=[2])
    assert partial == {"finished": [2], "missing": [1]}
    assert (out / "fold-2" / "metrics.json").is_file() and not (out / "fold-1").exists()
    assert not (out / CV_JSON).exists()
    trained = []
    real = cv_module._run_fold
    monkeypatch.setattr(cv_module, "_run_fold", lambda *args: trained.append(args[4].path.name) or real(*args))
    result = cross_validate(cv_config, out, 2, verbose=0)
    assert trained == ["fold-1"]  # fold 2 is reused
    assert [f["fold"] for f in result["per_fold"]] == [1, 2] and (out / CV_JSON).is_file()


def test_a_fold_is_reused_from_an_older_config_json_and_not_from_another_computation(cv_config, tmp_path):
    from covidxray.config import Runtime
    from covidxray.rundir import RunDir
    from covidxray.training.cv import _same_config

    config, runtime = cv_config.resolve(), Runtime().resolve(cv_config)
    run = RunDir(tmp_path / "fold-1")
    run.create()
    config.save(run.file("config.json"), runtime)
    assert _same_config(run, config, runtime)
    new = json.loads(run.file("config.json").read_text())
    older = {**{k: v for k, v in new.items() if k != "runtime"}, "jit_compile": "auto", "steps_per_execution": 1,
             "mixed_precision": runtime.mixed_precision, "cache_dir": None, "distribute": "none", "devices": None,
             "recipe": None, "weight_decay": 0.0}  # as the committed folds of benchmarks/results/cv hold it
    for stored, same in ((older, True), ({**older, "recipe": "source-robust"}, True),
                         ({**older, "cache_dir": "elsewhere", "steps_per_execution": 4}, True),  # how, not what
                         ({**older, "weight_decay": 0.01}, False),  # trained with the former --weight-decay
                         ({**older, "mixed_precision": "mixed_float16"}, False),  # other numbers
                         ({**older, "epochs": config.epochs + 1}, False)):
        run.file("config.json").write_text(json.dumps(stored))
        assert _same_config(run, config, runtime) is same, stored


def test_folds_without_validation_train_on_all_their_training_folds(tiny_model, fast_bootstrap, tmp_path):
    from covidxray.reports.cv_report import render_cv_report

    data = make_dataset(tmp_path / "data", per_class=8, classes=("covid", "normal"))
    config = TrainConfig.for_command("cv", data=str(data), task="binary", model=tiny_model, epochs=2, batch_size=8,
                                     seed=2, augment=False, val_fraction=0.0)
    result = cross_validate(config, tmp_path / "cv", 2, verbose=0)
    for k in (1, 2):
        split = pd.read_csv(tmp_path / "cv" / f"fold-{k}" / "split.csv")
        assert set(split["split"]) == {"train", "test"} and (split["split"] == "train").sum() == 8
    assert [f["validation_accuracy"] for f in result["per_fold"]] == [None, None]
    assert [f["best_epoch"] for f in result["per_fold"]] == [2, 2]
    assert result["pooled"]["n"] == 16
    report = render_cv_report(result)
    assert "no validation split: each fold trains on all its training folds and keeps its last epoch" in report
    assert "draws a validation split" not in report and "| AUC | last epoch |" in report
    assert "| AUC | best epoch |" in render_cv_report({**result, "config": {**result["config"], "val_fraction": 0.15}})
