"""covidxray ensemble: several runs averaged into one run that every command reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidxray import rundir
from covidxray.cli import main
from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.inference.predictor import load_predictor
from covidxray.training.ensemble import make_ensemble
from covidxray.training.train import train
from helpers import build_run, make_dataset


@pytest.fixture
def members(tmp_path, tiny_model, fast_bootstrap):
    """Two tiny runs on one split (same seed), told apart by their epochs."""
    data = make_dataset(tmp_path / "data")
    runs = []
    for epochs in (1, 3):
        config = TrainConfig(data=str(data), model=tiny_model, epochs=epochs, batch_size=8, seed=1, augment=False)
        train(config, tmp_path / f"run-{epochs}", verbose=0)
        runs.append(tmp_path / f"run-{epochs}")
    return runs


def test_an_ensemble_averages_its_members_and_is_scored_on_images_no_member_saw(members, tmp_path):
    metrics = make_ensemble([str(r) for r in members], tmp_path / "ensemble")
    images = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 1)).astype("float32")
    own = [load_predictor(r).predict_raw(images) for r in members]
    assert not np.allclose(own[0], own[1], atol=1e-3)  # two different models
    averaged = load_predictor(tmp_path / "ensemble").predict_raw(images)
    np.testing.assert_allclose(averaged, (own[0] + own[1]) / 2, atol=1e-6)
    split = rundir.RunDir(tmp_path / "ensemble").read_split()
    first = rundir.RunDir(members[0]).read_split()
    assert set(split.loc[split["split"] == "test", "path"]) == set(first.loc[first["split"] == "test", "path"])
    assert metrics["test"]["n"] == int((split["split"] == "test").sum()) > 0
    stored = json.loads(rundir.RunDir(tmp_path / "ensemble").file(rundir.METRICS).read_text())
    assert stored["members"] == [str(rundir.RunDir(m).path) for m in members]  # the one record of the members


def test_an_ensemble_with_a_member_that_lists_its_images_relative_counts_each_image_once(members, tmp_path):
    # a shipped preset's split.csv lists its images relative to their dataset folder; a run's by full path
    preset_like = rundir.RunDir(members[1])
    split = preset_like.read_split(columns=("path", "pixels", "split"))
    split["path"] = [str(Path(p).relative_to(tmp_path)) for p in split["path"]]  # data/covid/x.png
    rundir.write_csv(preset_like.file(rundir.SPLIT), split)
    metrics = make_ensemble([str(r) for r in members], tmp_path / "ensemble")
    ensemble = rundir.RunDir(tmp_path / "ensemble").read_split()
    first = rundir.RunDir(members[0]).read_split()
    assert len(ensemble) == len(first)
    assert set(ensemble.loc[ensemble["split"] == "test", "path"]) == set(first.loc[first["split"] == "test", "path"])
    assert metrics["test"]["n"] == int((first["split"] == "test").sum())
    # with the relative member first, its test rows are not on this machine's working folder: the full paths win
    metrics = make_ensemble([str(members[1]), str(members[0])], tmp_path / "reversed")
    assert metrics["test"]["n"] == int((first["split"] == "test").sum())


def test_the_command_refuses_to_replace_an_ensemble_and_runs_that_do_not_match(members, tmp_path, capsys):
    out = tmp_path / "ensemble"
    assert main(["--quiet", "ensemble", "--run", str(members[0]), "--run", str(members[1]), "--out", str(out)]) == 0
    assert "ensemble of 2 runs" in capsys.readouterr().out
    assert main(["--quiet", "ensemble", "--run", str(members[0]), "--run", str(members[1]), "--out", str(out)]) == 2
    assert "already holds a trained run" in capsys.readouterr().err
    other = build_run(tmp_path / "other", image_size=48)
    with pytest.raises(CovidXrayError, match=r"other: image_size is 48, .*run-1's 32"):
        make_ensemble([members[0], other], tmp_path / "mixed")
    with pytest.raises(CovidXrayError, match="two or more different runs"):
        make_ensemble([members[0], members[0]], tmp_path / "same")
    with pytest.raises(CovidXrayError, match="is one of the members"):
        make_ensemble([members[0], members[1]], members[1], overwrite=True)
    assert not (tmp_path / "mixed").exists() and pd.read_csv(members[1] / "split.csv").shape[0] > 0


def test_an_ensemble_exports_to_onnx_and_refuses_test_time_augmentation(tmp_path):
    pytest.importorskip("onnxruntime")
    from covidxray.inference.export import export_run

    members = [build_run(tmp_path / f"run-{seed}", seed=seed) for seed in (0, 1)]
    make_ensemble(members, tmp_path / "ensemble")  # runs without a split.csv: none written
    assert not (tmp_path / "ensemble" / "split.csv").exists()
    export_run(str(tmp_path / "ensemble"), "onnx", None)
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    keras_engine = load_predictor(tmp_path / "ensemble").predict_raw(images)
    onnx_engine = load_predictor(tmp_path / "ensemble", engine="onnxruntime").predict_raw(images)
    np.testing.assert_allclose(onnx_engine, keras_engine, atol=1e-4)
    with pytest.raises(CovidXrayError, match="no augmentation layer .*an ensemble"):
        load_predictor(tmp_path / "ensemble", tta=2)
