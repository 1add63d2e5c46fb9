"""covidxray.training.backup: what a run can be resumed from, and the states saved each epoch."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from covidxray import rundir
from covidxray.errors import CovidXrayError
from covidxray.models.augment import RandomAffine
from covidxray.training.backup import EarlyStopping, SeedStates, check_resumable, read_state


def state(epoch: int) -> dict:
    """A backup's state.json as RunBackup writes it."""
    return {"epoch": epoch, "stopped": False, "fit_seconds": 1.5, "history": [], "parts": {}}


def test_check_resumable_says_why_not(tmp_path):
    run = rundir.RunDir(tmp_path / "run")
    with pytest.raises(CovidXrayError, match="no such run directory to resume"):
        check_resumable(run)
    run.path.mkdir()
    with pytest.raises(CovidXrayError, match="config.json: missing"):
        check_resumable(run)
    run.file(rundir.CONFIG).write_text("{}")
    with pytest.raises(CovidXrayError, match="no backup to resume from .* --overwrite"):
        check_resumable(run)
    backup = run.file(rundir.BACKUP)
    backup.mkdir()
    (backup / "state.json").write_text(json.dumps(state(3)))
    assert check_resumable(run) == read_state(run) == state(3)
    (backup / "state.json").write_text("{cut sho")
    with pytest.raises(CovidXrayError, match="state.json: unreadable"):
        read_state(run)
    for broken in ([], {**state(3), "epoch": "3"}, {**state(3), "parts": None}, {"epoch": 3}):
        (backup / "state.json").write_text(json.dumps(broken))
        with pytest.raises(CovidXrayError, match="state.json: not a covidxray training state .*start the run again"):
            read_state(run)
    run.file(rundir.METRICS).write_text("{}")
    with pytest.raises(CovidXrayError, match="the run is complete"):
        check_resumable(run)


def test_read_state_recovers_a_swap_cut_short(tmp_path):
    run = rundir.RunDir(tmp_path)
    aside = tmp_path / ".backup.covidxray-old"  # killed between the two renames of atomic_write_dir
    aside.mkdir()
    (aside / "state.json").write_text(json.dumps(state(2)))
    assert read_state(run) == state(2) and (tmp_path / "backup" / "state.json").is_file()
    assert read_state(rundir.RunDir(tmp_path / "empty")) is None


def test_early_stopping_state_round_trips():
    stopping = EarlyStopping(monitor="val_accuracy", mode="max", patience=3)
    stopping.wait, stopping.best, stopping.best_epoch = 2, np.float32(0.75), 4
    again = EarlyStopping(monitor="val_accuracy", mode="max", patience=3)
    again.restore(json.loads(json.dumps(stopping.state())))
    assert (again.wait, again.best, again.best_epoch) == (2, 0.75, 4)


def test_seed_states_restore_the_augmentation_draws():
    inputs = keras.Input((16, 16, 1))
    model = keras.Model(inputs, RandomAffine(seed=3)(inputs))
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    model(images, training=True)
    seeds = SeedStates(model)
    assert seeds.variables() and not model.weights  # seed generators are variables, not weights
    saved = seeds.state()
    expected = keras.ops.convert_to_numpy(model(images, training=True))
    seeds.restore(saved)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images, training=True)), expected, atol=1e-5)
    with pytest.raises(CovidXrayError, match="seed states"):
        seeds.restore([])
