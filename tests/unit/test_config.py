"""covidxray.config: every setting declared once, with its choices and bounds; resolve, conflicts, config.json."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from covidxray.config import (
    MAY_CHANGE_ON_RESUME,
    TRAINING_COMMANDS,
    TrainConfig,
    check_setting,
    option_name,
)
from covidxray.data.blanking import DEFAULT_FRACTION
from covidxray.errors import CovidXrayError
from covidxray.models import DEFAULT_MODEL, MODELS


def test_defaults_and_option_names():
    config = TrainConfig(data="d")
    assert (config.task, config.model, config.epochs, config.group_by) == ("three-class", DEFAULT_MODEL, 30, "patient")
    assert option_name("batch_size") == "--batch-size" and option_name("data") == "--data"
    assert MAY_CHANGE_ON_RESUME == ("cache_dir",)


def test_for_command_applies_the_commands_own_defaults():
    assert TrainConfig.for_command("probe", data="d").blank_fraction == DEFAULT_FRACTION
    assert TrainConfig.for_command("train", data="d").blank_fraction == 0.0
    assert TrainConfig.for_command("probe", data="d", blank_fraction=0.5).blank_fraction == 0.5  # given wins
    assert TrainConfig.for_command("cv", data="d", epochs=3) == TrainConfig(data="d", epochs=3)


@pytest.mark.parametrize("values, message", [
    ({"task": "four-class"}, "--task must be one of binary, three-class; got 'four-class'"),
    ({"model": "resnet9000"}, "--model must be one of .*compactnet.*darkcovidnet"),
    ({"group_by": "hospital"}, "--group-by must be one of patient, none"),
    ({"epochs": 0}, "--epochs must be at least 1; got 0"),
    ({"learning_rate": 0.0}, "--learning-rate must be more than 0; got 0"),
    ({"val_fraction": 0.6}, "--val-fraction must be in \\[0, 0.5\\]; got 0.6"),
    ({"val_fraction": 0.01}, "--val-fraction must be 0 \\(no validation split\\) or at least 0.02; got 0.01"),
    ({"val_fraction": 0.0, "target_sensitivity": 0.9}, "--target-sensitivity chooses the COVID threshold on the "
     "validation split; give --val-fraction above 0"),
    ({"test_fraction": 0.01}, "--test-fraction must be in \\[0.02, 0.5\\]"),
    ({"image_size": 8}, "--image-size must be in \\[32, 1024\\]; got 8"),
    ({"blank_fraction": 1.0}, "--blank-fraction must be in \\[0, 1\\); got 1.0"),
    ({"target_sensitivity": 0.0}, "--target-sensitivity must be in \\(0, 1\\]; got 0.0"),
    ({"patience": -1}, "--patience must be at least 0"),
    ({"batch_size": float("nan")}, "--batch-size must be a number; got nan"),
    ({"epochs": True}, "--epochs must be a number; got True"),
    ({"epochs": "3"}, "--epochs must be a number; got '3'"),
    ({"devices": 2}, "--devices needs --distribute data-parallel"),
    ({"distribute": "data-parallel", "devices": 0}, "--devices must be at least 1"),
    ({"data": ""}, "--data is required"),
])
def test_check_names_the_option_and_its_bounds(values, message):
    with pytest.raises(CovidXrayError, match=message):
        TrainConfig(**{"data": "d", **values}).check()


def test_bounds_are_inclusive_or_open_as_declared():
    TrainConfig(data="d", val_fraction=0.5, test_fraction=0.02, blank_fraction=0.0, target_sensitivity=1.0,
                image_size=1024, patience=0).check()  # every bound that is included
    TrainConfig(data="d", val_fraction=0.0).check()  # no validation split
    assert not TrainConfig(data="d", val_fraction=0.0).has_validation and TrainConfig(data="d").has_validation


def test_check_setting_outside_a_config():
    check_setting("image_size", 64)
    with pytest.raises(CovidXrayError, match="--image-size must be in \\[32, 1024\\]; got 2000"):
        check_setting("image_size", 2000)


def test_resolve_fills_the_derived_settings():
    config = TrainConfig(data=["only"], task="binary").resolve()
    assert config.classes == ("covid", "normal") and config.image_size == MODELS[DEFAULT_MODEL].image_size
    assert config.data == "only"  # one dataset: a path, not a list
    both = TrainConfig(data=["a", "b"], model="darkcovidnet", image_size=64).resolve()
    assert both.data == ["a", "b"] and both.image_size == 64 and both.classes == ("covid", "normal", "pneumonia")


def test_conflicts_name_each_changed_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = TrainConfig(data=str(tmp_path / "data"), epochs=8, seed=5).resolve()
    assert run.conflicts({"epochs": 8, "seed": 5, "data": ["data"], "cache_dir": "elsewhere", "classes": ()}) == []
    epochs, data, blank = run.conflicts({"epochs": 3, "data": "other", "blank_fraction": 0.5})
    assert epochs == "--epochs 3 (the run has 8)" and blank == "--blank-fraction 0.5 (the run has 0.0)"
    assert data == f"--data other (the run has {tmp_path / 'data'})"


def test_config_json_round_trip_and_renamed_keys(tmp_path):
    config = TrainConfig(data=["a", "b"], task="binary", blank_fraction=0.5, epochs=4).resolve()
    config.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved) == {f.name for f in fields(TrainConfig)} | {"classes"} and saved["classes"] == ["covid", "normal"]
    assert TrainConfig.load(tmp_path / "config.json") == config
    old = TrainConfig.from_dict({"data": "d", "task": "binary", "blank_lungs": 0.6, "removed_setting": 1,
                                 "classes": ["covid", "normal"]})
    assert old.blank_fraction == 0.6 and old.classes == ("covid", "normal")  # an older run's name is read
    with pytest.raises(CovidXrayError, match="run/config.json: not a covidxray run configuration"):
        TrainConfig.from_dict(["not", "a", "dict"], "run/config.json")
    with pytest.raises(CovidXrayError, match="run/config.json: not a valid covidxray run configuration: .*--epochs"):
        TrainConfig.from_dict({"data": "d", "epochs": 0}, "run/config.json")
    with pytest.raises(CovidXrayError, match="are not those of the task three-class"):
        TrainConfig.from_dict({"data": "d", "classes": ["covid", "normal"]})


def test_every_setting_declares_its_help_and_commands():
    for f in fields(TrainConfig):
        assert f.metadata["help"], f.name
        assert set(f.metadata["commands"]) <= set(TRAINING_COMMANDS), f.name
    assert TrainConfig.__dataclass_fields__["distribute"].metadata["commands"] == ("train",)
    assert TrainConfig.__dataclass_fields__["jit_compile"].metadata["commands"] == ()  # library only


@pytest.mark.parametrize("change, option", [({"mixed_precision": "float8"}, "--mixed-precision"),
                                            ({"steps_per_execution": 0}, "--steps-per-execution")])
def test_bad_speed_options_are_clear_errors(change, option):
    with pytest.raises(CovidXrayError, match=option):
        TrainConfig(data="unused", **change).resolve()




def test_blanking_names_what_the_probe_hides():
    assert TrainConfig(data="x").blanking is None
    assert TrainConfig(data="x", blank_fraction=0.5).blanking == "box"
    assert TrainConfig(data="x", blank_region="lungs").blanking == "lungs"
    assert TrainConfig(data="x", blank_region="outside-lungs").blanking == "outside-lungs"


@pytest.mark.parametrize("values, option", [({"lungs": "bogus"}, "--lungs"), ({"intensity": "gamma"}, "--intensity"),
                                            ({"blank_region": "heart"}, "--blank-region")])
def test_lung_settings_are_checked(values, option):
    with pytest.raises(CovidXrayError, match=f"{option} must be one of"):
        TrainConfig(data="x", **values).check()


def test_an_older_config_without_lung_settings_sees_the_whole_image():
    old = TrainConfig.from_dict({"data": "d", "task": "binary", "blank_fraction": 0.5})
    assert (old.lungs, old.intensity, old.blank_region, old.lung_segmenter) == ("none", "none", "box", None)
    assert old.blanking == "box"
    new = TrainConfig.from_dict({"data": "d", "lungs": "crop", "intensity": "clahe"})
    assert (new.lungs, new.intensity) == ("crop", "clahe")


def test_a_recipe_fills_its_settings_and_options_given_beside_it_win():
    from covidxray.config import RECIPES

    paper = TrainConfig.for_command("cv", data="x", recipe="darkcovidnet-paper")
    assert {name: getattr(paper, name) for name in RECIPES["darkcovidnet-paper"]} == RECIPES["darkcovidnet-paper"]
    assert (paper.model, paper.image_size, paper.epochs, paper.lr_schedule, paper.group_by) == (
        "darkcovidnet", 256, 100, "one-cycle", "none")
    grouped = TrainConfig.for_command("cv", data="x", recipe="darkcovidnet-paper", group_by="patient", epochs=3)
    assert (grouped.group_by, grouped.epochs, grouped.model) == ("patient", 3, "darkcovidnet")
    assert TrainConfig.for_command("cv", data="x").lr_schedule == "cosine"  # no recipe: the defaults
    with pytest.raises(CovidXrayError, match="--recipe must be one of darkcovidnet-paper, source-robust; got 'fastai'"):
        TrainConfig.for_command("cv", data="x", recipe="fastai")
    robust = TrainConfig.for_command("train", data="x", recipe="source-robust")
    assert robust.lungs == "crop" and robust.source_adversary == 0 and (robust.model, robust.epochs) == ("compactnet", 30)
    assert TrainConfig.for_command("train", data="x", recipe="source-robust", lungs="mask").lungs == "mask"


def test_a_recipe_is_saved_with_the_run_and_read_back(tmp_path):
    config = TrainConfig.for_command("train", data="x", recipe="darkcovidnet-paper").resolve()
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    assert TrainConfig.from_dict({"data": "x"}).recipe is None  # an older config.json


def test_mixed_precision_auto_is_resolved_to_what_the_run_trains_in(monkeypatch):
    from covidxray import backend

    asked = []
    monkeypatch.setattr(backend, "auto_mixed_precision",
                        lambda prefers: asked.append(prefers) or ("mixed_bfloat16" if prefers else None))
    assert TrainConfig().mixed_precision == "auto"
    assert TrainConfig(data="a", model="darkcovidnet").resolve().mixed_precision == "mixed_bfloat16"
    assert TrainConfig(data="a", model="compactnet").resolve().mixed_precision == "float32"
    assert asked == [True, False]  # the model's measured preference decides
    assert TrainConfig(data="a", model="darkcovidnet", mixed_precision="float32").resolve().mixed_precision == "float32"
    assert TrainConfig(data="a", mixed_precision=None).resolve().mixed_precision == "float32"
    assert TrainConfig(data="a", mixed_precision="mixed_float16").resolve().mixed_precision == "mixed_float16"
    assert len(asked) == 2  # an explicit choice is kept as given
    resolved = TrainConfig(data="a", model="darkcovidnet").resolve()
    assert resolved.resolve().mixed_precision == "mixed_bfloat16"  # a saved run keeps what it trained in
    older = {k: v for k, v in TrainConfig(data="a").to_dict().items()}
    older["mixed_precision"] = None  # config.json of a run from before "auto": it trained in float32
    assert TrainConfig.from_dict(older).mixed_precision == "float32"
