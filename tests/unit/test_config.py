"""covidxray.config: every setting declared once, with its choices and bounds; resolve, conflicts, config.json."""

from __future__ import annotations

import json
import re
from dataclasses import fields

import pytest

from covidxray.config import (
    MAY_CHANGE_ON_RESUME,
    RUNTIME,
    TRAINING_COMMANDS,
    WEIGHT_DECAY,
    Runtime,
    TrainConfig,
    check_setting,
    option_name,
    stored_weight_decay_conflict,
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
    assert set(saved) == {f.name for f in fields(TrainConfig)} | {"classes", "weight_decay"}
    assert saved["classes"] == ["covid", "normal"] and saved["weight_decay"] == 0.0
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
    for f in fields(TrainConfig) + fields(Runtime):
        assert f.metadata["help"], f.name
        assert set(f.metadata["commands"]) <= set(TRAINING_COMMANDS), f.name
    assert Runtime.__dataclass_fields__["devices"].metadata["commands"] == ("train",)
    assert Runtime.__dataclass_fields__["jit_compile"].metadata["commands"] == ()  # library only


def test_how_a_run_computes_is_no_setting_of_what_it_computes():
    names = {f.name for f in fields(TrainConfig)}
    assert len(names) <= 25
    assert not names & {f.name for f in fields(Runtime)}
    assert not names & {"recipe", "weight_decay", "distribute"}


@pytest.mark.parametrize("change, option", [({"mixed_precision": "float8"}, "--mixed-precision must be one of"),
                                            ({"steps_per_execution": 0}, "--steps-per-execution must be at least 1"),
                                            ({"devices": 0}, "--devices must be at least 1; got 0")])
def test_bad_runtime_options_are_clear_errors(change, option):
    with pytest.raises(CovidXrayError, match=option):
        Runtime(**change).resolve(TrainConfig(data="unused"))


def test_devices_above_one_train_data_parallel_and_not_with_a_source_adversary():
    assert not Runtime().data_parallel and Runtime().devices == 1  # the default: one device
    assert Runtime(devices=2).data_parallel and Runtime(devices=None).data_parallel  # None: every visible device
    Runtime(devices=2).check(TrainConfig(data="x"))
    Runtime(devices=1).check(TrainConfig(data="x", source_adversary=0.1))
    with pytest.raises(CovidXrayError, match="--source-adversary trains in one process; leave out --devices"):
        Runtime(devices=2).check(TrainConfig(data="x", source_adversary=0.1))


def test_one_cycle_implies_fastais_weight_decay_and_cosine_plain_adam():
    assert TrainConfig(data="x", lr_schedule="one-cycle").weight_decay == 0.01 == WEIGHT_DECAY["one-cycle"]
    assert TrainConfig(data="x").weight_decay == 0.0
    assert TrainConfig.for_command("cv", data="x", recipe="darkcovidnet-paper").weight_decay == 0.01
    with pytest.raises(TypeError):
        TrainConfig(data="x", weight_decay=0.01)  # no longer a setting


def test_a_stored_weight_decay_is_ignored_unless_it_differs_from_the_schedules():
    for schedule, decay in (("one-cycle", 0.01), ("cosine", 0.0)):
        values = {"data": "d", "lr_schedule": schedule, "weight_decay": decay}
        assert TrainConfig.from_dict(values).lr_schedule == schedule
        assert stored_weight_decay_conflict(values) is None
    assert stored_weight_decay_conflict({"data": "d"}) is None  # a run from before weight decay
    odd = {"data": "d", "lr_schedule": "cosine", "weight_decay": 0.05}
    assert TrainConfig.from_dict(odd).weight_decay == 0.0  # it loads (predict, evaluate)
    message = stored_weight_decay_conflict(odd, "run/config.json")
    assert message.startswith("run/config.json: the run trained with weight decay 0.05, but --lr-schedule cosine "
                              "now implies 0 (--weight-decay is gone)") and "\n" not in message




def test_blanking_names_what_the_probe_hides():
    assert TrainConfig(data="x").blanking is None
    assert TrainConfig(data="x", blank_fraction=0.5).blanking == "box"
    assert TrainConfig(data="x", blank_region="lungs").blanking == "lungs"
    assert TrainConfig(data="x", blank_region="outside-lungs").blanking == "outside-lungs"


@pytest.mark.parametrize("values, option", [({"lungs": "bogus"}, "--lungs"), ({"blank_region": "heart"}, "--blank-region")])
def test_lung_settings_are_checked(values, option):
    with pytest.raises(CovidXrayError, match=f"{option} must be one of"):
        TrainConfig(data="x", **values).check()


def test_an_older_config_without_lung_settings_sees_the_whole_image():
    old = TrainConfig.from_dict({"data": "d", "task": "binary", "blank_fraction": 0.5})
    assert (old.lungs, old.blank_region, old.lung_segmenter) == ("none", "box", None)
    assert old.blanking == "box"
    new = TrainConfig.from_dict({"data": "d", "lungs": "crop"})
    assert new.lungs == "crop"


REMOVED_INTENSITY = (r"{}: this run was trained with intensity harmonisation \(--intensity {}\), which was removed from "
                     r"covidxray \(git history keeps it, in the commits before its removal\); retrain the run without it$")


def test_a_config_json_with_intensity_harmonisation_off_loads_as_before(tmp_path):
    path = tmp_path / "config.json"
    for older in ({"data": "d", "lungs": "crop", "intensity": "none"}, {"data": "d", "lungs": "crop", "intensity": None}):
        path.write_text(json.dumps(older))
        assert TrainConfig.load(path) == TrainConfig(data="d", lungs="crop", head_epochs=0)
    assert "intensity" not in TrainConfig(data="d").to_dict()  # a new run records no such setting


@pytest.mark.parametrize("intensity", ["clahe", "equalize", "gamma"])
def test_a_config_json_with_intensity_harmonisation_is_refused_naming_the_file(tmp_path, intensity):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"data": "d", "lungs": "crop", "intensity": intensity}))
    with pytest.raises(CovidXrayError, match=REMOVED_INTENSITY.format("^" + re.escape(str(path)), intensity)):
        TrainConfig.load(path)
    with pytest.raises(CovidXrayError, match=REMOVED_INTENSITY.format("^run/config.json", intensity)):
        TrainConfig.from_dict({"data": "d", "intensity": intensity}, "run/config.json")


def test_a_config_json_of_the_lungs_masked_is_refused_naming_the_file():
    with pytest.raises(CovidXrayError, match=r"^run/config.json: this run was trained with every pixel outside the "
                       r"lungs set to 0 \(--lungs mask\), which was removed from covidxray"):
        TrainConfig.from_dict({"data": "d", "lungs": "mask"}, "run/config.json")


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
    assert TrainConfig.for_command("train", data="x", recipe="source-robust", lungs="none").lungs == "none"


def test_a_run_made_from_a_recipe_equals_one_given_its_settings(tmp_path):
    config = TrainConfig.for_command("train", data="x", recipe="darkcovidnet-paper").resolve()
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    assert "recipe" not in json.loads((tmp_path / "config.json").read_text())
    from covidxray.config import RECIPES

    assert config == TrainConfig(data="x", **RECIPES["darkcovidnet-paper"]).resolve()
    assert TrainConfig.from_dict({"data": "x", "recipe": "darkcovidnet-paper"}) == TrainConfig(data="x", head_epochs=0)


def test_mixed_precision_auto_is_resolved_to_what_the_run_trains_in(monkeypatch):
    from covidxray import backend

    asked = []
    monkeypatch.setattr(backend, "auto_mixed_precision",
                        lambda prefers: asked.append(prefers) or ("mixed_bfloat16" if prefers else None))

    def precision(model="compactnet", **runtime):
        return Runtime(**runtime).resolve(TrainConfig(data="a", model=model)).mixed_precision

    assert Runtime().mixed_precision == "auto"
    assert precision("darkcovidnet") == "mixed_bfloat16" and precision("compactnet") == "float32"
    assert asked == [True, False]  # the model's measured preference decides
    assert precision("darkcovidnet", mixed_precision="float32") == "float32"
    assert precision(mixed_precision=None) == "float32"
    assert precision(mixed_precision="mixed_float16") == "mixed_float16"
    assert len(asked) == 2  # an explicit choice is kept as given
    resolved = Runtime().resolve(TrainConfig(data="a", model="darkcovidnet"))
    assert resolved.resolve(TrainConfig(data="a", model="darkcovidnet")) == resolved  # a saved run keeps it
    assert len(asked) == 3


def test_config_json_records_the_resolved_runtime_and_reads_it_back(tmp_path):
    config = TrainConfig(data="a", model="darkcovidnet").resolve()
    runtime = Runtime(mixed_precision="mixed_bfloat16", steps_per_execution=4, devices=2, cache_dir="c")
    config.save(tmp_path / "config.json", runtime)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved[RUNTIME] == {"mixed_precision": "mixed_bfloat16", "jit_compile": "auto", "steps_per_execution": 4,
                              "devices": 2, "cache_dir": "c"}
    assert Runtime.load(tmp_path / "config.json") == runtime and TrainConfig.load(tmp_path / "config.json") == config
    with pytest.raises(CovidXrayError, match="run/config.json: not a valid .*--devices must be at least 1; got 0"):
        Runtime.from_dict({**saved, RUNTIME: {**saved[RUNTIME], "devices": 0}}, "run/config.json")
    with pytest.raises(CovidXrayError, match="steps_per_execution must be int"):
        Runtime.from_dict({RUNTIME: {"steps_per_execution": "4"}})
    conflicts = runtime.conflicts({"cache_dir": "elsewhere", "devices": 2, "mixed_precision": "float32"})
    assert conflicts == ["--mixed-precision float32 (the run has mixed_bfloat16)"]  # the cache may move


OLDER = {"data": "a", "lr_schedule": "cosine", "weight_decay": 0.0, "jit_compile": "auto",
         "mixed_precision": "mixed_bfloat16", "steps_per_execution": 2, "cache_dir": "c", "distribute": "none",
         "devices": None, "recipe": "source-robust", "classes": ["covid", "normal", "pneumonia"]}


@pytest.mark.parametrize("older, expected", [
    (OLDER, Runtime("mixed_bfloat16", "auto", 2, 1, "c")),
    ({**OLDER, "mixed_precision": None}, Runtime("float32", "auto", 2, 1, "c")),  # before "auto": float32
    ({**OLDER, "distribute": "data-parallel", "devices": 4}, Runtime("mixed_bfloat16", "auto", 2, 4, "c")),
    ({**OLDER, "distribute": "data-parallel"}, Runtime("mixed_bfloat16", "auto", 2, None, "c")),  # every device
    ({"data": "a", "mixed_precision": "float32"}, Runtime("float32", "auto", 1, 1, None)),
])
def test_an_older_config_json_with_the_runtime_at_top_level_loads(older, expected):
    assert Runtime.from_dict(older) == expected
    assert TrainConfig.from_dict(older) == TrainConfig(data="a", head_epochs=0)  # the rest is ignored


def test_the_shipped_and_committed_config_files_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [*root.glob("src/covidxray/presets/*/config.json"), *root.glob("benchmarks/results/cv/*/fold-*/config.json")]
    assert len(files) >= 10
    for path in files:
        values = json.loads(path.read_text())
        if values.get("intensity", "none") != "none":  # the folds that measured the removed --intensity
            with pytest.raises(CovidXrayError, match=r"intensity harmonisation \(--intensity clahe\), which was removed"):
                TrainConfig.load(path)
            continue
        if values.get("lungs") == "mask":  # and those that measured the removed --lungs mask
            with pytest.raises(CovidXrayError, match=r"outside the lungs set to 0 \(--lungs mask\), which was removed"):
                TrainConfig.load(path)
            continue
        config, runtime = TrainConfig.load(path), Runtime.load(path)
        stored = values.get("runtime", values)  # runtime settings: top level before Runtime, nested after
        assert runtime.mixed_precision == (stored["mixed_precision"] or "float32") and runtime.devices == 1
        assert config.weight_decay == values.get("weight_decay", 0.0) and stored_weight_decay_conflict(values) is None
        recorded = config.to_dict()
        assert {k: recorded[k] for k in values if k in recorded} == {k: values[k] for k in values if k in recorded}
