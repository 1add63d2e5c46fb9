"""Tests for the shipped model (covidxray.pretrained) and ``predict`` without ``--run``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from covidxray.pretrained import MODEL_CARD, default_run_dir, package_run
from PIL import Image

from covidxray import rundir
from covidxray.cli import main
from covidxray.errors import CovidXrayError


def test_the_shipped_model_is_small_documented_and_complete():
    folder = default_run_dir()
    for name in (rundir.MODEL, rundir.CONFIG, rundir.CALIBRATION, rundir.METRICS, MODEL_CARD):
        assert (folder / name).is_file(), name
    assert (folder / rundir.MODEL).stat().st_size < 20 * 2**20
    card = (folder / MODEL_CARD).read_text()
    for needed in ("not for diagnosis", "patient-grouped", "95%", "ieee8023", "shortcut", "covidxray train"):
        assert needed.lower() in card.lower(), needed
    metrics = json.loads((folder / rundir.METRICS).read_text())
    assert set(metrics["test"]["classes"]) == {"covid", "normal", "pneumonia"}


def test_predict_without_run_uses_the_shipped_model(tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        path = tmp_path / f"x{i}.png"
        Image.fromarray(rng.integers(0, 256, (200, 180), dtype=np.uint8)).save(path)
        paths.append(str(path))
    assert main(["--quiet", "predict", *paths, "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == paths
    for r in results:
        assert set(r["probabilities"]) == {"covid", "normal", "pneumonia"}
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4)


def test_no_packaged_model_is_a_clear_error(monkeypatch, tmp_path):
    import covidxray.pretrained as pretrained

    monkeypatch.setattr(pretrained, "files", lambda package: tmp_path)
    with pytest.raises(CovidXrayError, match="no packaged model; pass --run RUN_DIR"):
        pretrained.default_run_dir()


def test_package_run_drops_the_optimizer_state(tmp_path):
    import keras

    from covidxray.config import TrainConfig
    from covidxray.models import create_model

    run = tmp_path / "run"
    run.mkdir()
    model = create_model("compactnet", num_classes=3, image_size=32)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 32, 32, 1), "float32"), np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    model.save(run / rundir.MODEL)
    TrainConfig(data="x", image_size=32).resolve().save(run / rundir.CONFIG)
    for name in (rundir.CALIBRATION, rundir.METRICS):
        (run / name).write_text("{}")
    dest = package_run(run, tmp_path / "packaged")
    assert (dest / rundir.MODEL).stat().st_size < 0.6 * (run / rundir.MODEL).stat().st_size
    packaged = keras.saving.load_model(dest / rundir.MODEL, compile=False)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(packaged.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
