"""covidxray.rundir: the files of a run, refusing to replace one, and reading it back."""

import json

import numpy as np
import pandas as pd
import pytest

from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.rundir import BACKUP, CONFIG, METRICS, MODEL, RUN_FILES, RUN_FOLDERS, RunDir, write_csv


def test_overwrite_removes_every_file_of_the_old_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for name in RUN_FILES:
        run.file(name).write_text("old")
    for name in RUN_FOLDERS:  # backup/, saved_model/
        run.file(name).mkdir()
        (run.file(name) / "x").write_text("old")
    (run.path / ".model.0123456789ab.tmp.keras").write_text("left by a killed process")
    (run.path / "notes.txt").write_text("mine")
    with pytest.raises(CovidXrayError, match="--overwrite"):
        run.refuse_to_replace(overwrite=False)
    run.refuse_to_replace(overwrite=True)
    run.create()
    assert [p.name for p in run.path.iterdir()] == ["notes.txt"]  # not ours: kept


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(CovidXrayError, match="is a file"):
        RunDir(tmp_path / "run").refuse_to_replace()


def test_a_foreign_config_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CovidXrayError, match="config.json"):
        run.load_config()
    assert MODEL in RUN_FILES and METRICS in RUN_FILES


def test_an_interrupted_run_is_named_as_such(tmp_path):
    run = RunDir(tmp_path)
    run.refuse_to_replace()  # an empty folder: fine
    run.file(BACKUP).mkdir()
    with pytest.raises(CovidXrayError, match="holds an interrupted run; continue it with covidxray train --resume"):
        run.refuse_to_replace()
    run.file(METRICS).write_text("{}")  # finished, and no model: nothing to refuse
    run.refuse_to_replace()


def test_require_and_load_config(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(CovidXrayError, match=f"{tmp_path / MODEL}: missing; is {tmp_path} a finished covidxray run"):
        run.require(MODEL)
    config = TrainConfig(data="d", task="binary").resolve()
    config.save(run.file(CONFIG))
    assert run.require(CONFIG) == tmp_path / CONFIG and run.load_config() == config


def test_write_json_and_csv_take_numpy_values(tmp_path):
    run = RunDir(tmp_path)
    path = run.write_json("m.json", {"n": np.int64(3), "p": np.float32(0.5), "a": np.arange(2)})
    assert json.loads(path.read_text()) == {"n": 3, "p": 0.5, "a": [0, 1]}
    with pytest.raises(TypeError, match="cannot write object as JSON"):
        run.write_json("bad.json", {"x": object()})
    write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1, 2]}))
    assert (tmp_path / "t.csv").read_text() == "a\n1\n2\n"
