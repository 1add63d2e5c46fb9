"""covidxray.presets: the shipped model, finding presets by name, and packaging a run as one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidxray import rundir
from covidxray.errors import CovidXrayError
from covidxray.presets import DEFAULT_PRESET, MODEL_CARD, list_presets, package_run, preset_dir, resolve_run
from covidxray.rundir import FAMILIARITY


def test_the_shipped_model_is_small_documented_and_complete():
    folder = preset_dir(DEFAULT_PRESET)
    for name in (rundir.MODEL, rundir.CONFIG, rundir.CALIBRATION, rundir.METRICS, MODEL_CARD):
        assert (folder / name).is_file(), name
    assert (folder / rundir.MODEL).stat().st_size < 20 * 2**20
    card = (folder / MODEL_CARD).read_text()
    for needed in ("not for diagnosis", "patient-grouped", "95%", "ieee8023", "shortcut", "covidxray train"):
        assert needed.lower() in card.lower(), needed
    metrics = json.loads((folder / rundir.METRICS).read_text())
    assert set(metrics["test"]["classes"]) == {"covid", "normal", "pneumonia"}


def test_no_packaged_model_is_a_clear_error(monkeypatch, tmp_path):
    import covidxray.presets as presets

    monkeypatch.setattr(presets, "files", lambda package: tmp_path)  # an installation without presets
    assert presets.list_presets() == []
    with pytest.raises(CovidXrayError, match="it has none: pass --run RUN_DIR"):
        presets.preset_dir()
    with pytest.raises(CovidXrayError, match="it has none: pass --run RUN_DIR"):
        presets.resolve_run(None)


def test_package_run_drops_the_optimizer_state(tmp_path):
    from dataclasses import replace

    import keras

    from covidxray.config import TrainConfig
    from covidxray.models import create_model

    run = tmp_path / "run"
    run.mkdir()
    model = create_model("compactnet", num_classes=3, image_size=32)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 32, 32, 1), "float32"), np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    model.save(run / rundir.MODEL)
    dataset = tmp_path / "data" / "alpha"
    TrainConfig(data=str(dataset), image_size=32).resolve().save(run / rundir.CONFIG)
    for name in (rundir.CALIBRATION, rundir.METRICS):
        (run / name).write_text("{}")
    dest = package_run(run, tmp_path / "packaged")
    assert (dest / rundir.MODEL).stat().st_size < 0.6 * (run / rundir.MODEL).stat().st_size
    packaged = keras.saving.load_model(dest / rundir.MODEL, compile=False)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(packaged.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    for name in (rundir.CALIBRATION, rundir.METRICS):
        assert (dest / name).read_bytes() == (run / name).read_bytes(), name
    assert TrainConfig.load(dest / rundir.CONFIG) == replace(TrainConfig.load(run / rundir.CONFIG), data="alpha")
    assert not (dest / MODEL_CARD).exists()  # the card is written by hand
    assert not (dest / FAMILIARITY).exists()  # a run trained before familiarity.npz existed: nothing to ship
    (run / FAMILIARITY).write_bytes(b"fitted features")
    (run / rundir.SPLIT).write_text(f"path,dataset,split\n{dataset}/covid/a.png,{dataset},train\n")
    assert (package_run(run, dest) / FAMILIARITY).read_bytes() == b"fitted features"
    assert (dest / rundir.SPLIT).read_text() == "path,dataset,split\nalpha/covid/a.png,alpha,train\n"  # no folder of mine


def test_evaluate_leaves_out_the_images_the_default_preset_trained_on():
    """Without its split.csv, evaluate would score the preset on its own training images as if unseen."""
    from covidxray.inference.predictor import seen_by_run

    folder = preset_dir(DEFAULT_PRESET)
    split = rundir.RunDir(folder).read_split(columns=("path", "original_name", "pixels"))
    used = split[split["split"].isin(("train", "validation"))]
    assert len(used) > 3000 and (used["pixels"] != "").all()
    table = used.groupby("split").head(3).loc[:, ["path", "original_name", "pixels"]]
    table["path"] = "elsewhere/" + table["path"].str.rsplit("/", n=1).str[-1]  # the same images, on another machine
    assert seen_by_run(folder, table.reset_index(drop=True)).all()


def test_the_default_preset_flags_xrays_unlike_its_training_data():
    from covidxray.inference.familiarity import Familiarity

    familiarity = Familiarity.load(preset_dir(DEFAULT_PRESET))
    assert familiarity is not None and np.isfinite(familiarity.threshold) and familiarity.threshold > 0


def test_list_presets_names_the_shipped_ones():
    assert list_presets() == ["compactnet_darkcovidnet_ieee8023", DEFAULT_PRESET]  # the earlier default, kept
    assert preset_dir().name == DEFAULT_PRESET


def test_the_default_preset_is_trained_on_three_datasets_with_the_source_robust_recipe():
    from covidxray.config import TrainConfig

    path = preset_dir(DEFAULT_PRESET) / rundir.CONFIG
    config = TrainConfig.load(path)
    assert [Path(d).name for d in config.data] == ["darkcovidnet", "ieee8023", "radiography-db"]
    assert json.loads(path.read_text())["recipe"] == "source-robust"  # recorded before --recipe stopped being a setting
    assert config.lungs == "crop" and config.source_adversary == 0
    assert config == TrainConfig.for_command("train", "source-robust", data=config.data, image_size=160, head_epochs=0)
    card = (preset_dir(DEFAULT_PRESET) / MODEL_CARD).read_text()
    assert "leave-one-source-out" in card and "--recipe source-robust" in card


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(CovidXrayError, match=f"no preset 'nosuch' in this installation .*known presets: compactnet_darkcovidnet_ieee8023, {DEFAULT_PRESET}"):
        preset_dir("nosuch")
    with pytest.raises(CovidXrayError, match="no preset 'nosuch'"):
        resolve_run("preset:nosuch")


def test_resolve_run(tmp_path):
    shipped = preset_dir(DEFAULT_PRESET)
    assert resolve_run(None) == shipped and (resolve_run(None) / rundir.MODEL).is_file()
    assert resolve_run(f"preset:{DEFAULT_PRESET}") == resolve_run(preset=DEFAULT_PRESET) == shipped
    assert resolve_run(str(tmp_path)) == tmp_path and resolve_run(tmp_path / "x") == tmp_path / "x"  # not checked here
    with pytest.raises(CovidXrayError, match="either --run or --preset, not both"):
        resolve_run(tmp_path, DEFAULT_PRESET)
