"""covidxray.cli.options: the command line's training options, generated from TrainConfig's fields."""

from __future__ import annotations

import argparse

import pytest

from covidxray.cli.options import add_config_options, given_settings
from covidxray.config import Runtime, TrainConfig
from covidxray.data.blanking import DEFAULT_FRACTION
from covidxray.errors import CovidXrayError


def _parser(command: str, data_required: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covidxray")
    add_config_options(parser, command, data_required=data_required)
    return parser


def test_only_the_options_given_are_returned():
    args = _parser("train").parse_args(["--data", "a", "--data", "b", "--epochs", "3", "--learning-rate", "0.01"])
    assert given_settings(args) == {"data": ["a", "b"], "epochs": 3, "learning_rate": 0.01}
    config = TrainConfig.for_command("train", **given_settings(args))
    assert config.epochs == 3 and config.batch_size == TrainConfig().batch_size  # the rest: field defaults


def test_boolean_flags_turn_a_setting_on_or_off():
    parser = _parser("train")
    assert given_settings(parser.parse_args(["--data", "a", "--no-augment", "--no-class-weights", "--balance-sources"])) == {
        "data": ["a"], "augment": False, "class_weights": False, "balance_sources": True}
    assert "augment" not in given_settings(parser.parse_args(["--data", "a"]))  # not given: not returned
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "a", "--augment"])  # only the flag that changes the default exists


def test_aliases_and_types():
    parser = _parser("train")
    for option in ("--blank-fraction", "--blank-lungs", "--fraction"):
        assert given_settings(parser.parse_args(["--data", "a", option, "0.5"]))["blank_fraction"] == 0.5
    assert given_settings(parser.parse_args(["--data", "a", "--image-size", "64", "--target-sensitivity", "0.9"])) == {
        "data": ["a"], "image_size": 64, "target_sensitivity": 0.9}
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "a", "--epochs", "three"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "a", "--task", "four-class"])  # choices come from the field


def test_each_command_offers_its_own_options():
    def options(command, settings=TrainConfig):
        parser = argparse.ArgumentParser()
        add_config_options(parser, command, settings=settings)
        return {o for action in parser._actions for o in action.option_strings}

    train, cv, probe = options("train"), options("cv"), options("probe")
    assert "--test-fraction" in train and "--test-fraction" not in cv and "--blank-fraction" not in cv
    assert "--blank-fraction" in probe and "--classes" not in train
    runtime = {command: options(command, Runtime) for command in ("train", "cv", "probe")}
    assert runtime["train"] == {"-h", "--help", "--mixed-precision", "--steps-per-execution", "--devices", "--cache-dir"}
    assert runtime["cv"] == runtime["probe"] == runtime["train"] - {"--devices"}  # one process per fold
    everything = train | cv | probe | runtime["train"]
    assert not everything & {"--jit-compile", "--distribute", "--weight-decay", "--recipe"}  # library only, or gone


def test_runtime_options_parse_and_are_checked():
    parser = argparse.ArgumentParser()
    add_config_options(parser, "train", settings=Runtime)
    args = parser.parse_args(["--devices", "2", "--mixed-precision", "mixed_bfloat16", "--steps-per-execution", "4"])
    runtime = Runtime(**given_settings(args, Runtime))
    assert runtime == Runtime(mixed_precision="mixed_bfloat16", steps_per_execution=4, devices=2)
    assert runtime.data_parallel and not Runtime(**given_settings(parser.parse_args([]), Runtime)).data_parallel
    with pytest.raises(SystemExit):
        parser.parse_args(["--mixed-precision", "float8"])
    with pytest.raises(CovidXrayError, match="--devices must be at least 1; got 0"):
        Runtime(**given_settings(parser.parse_args(["--devices", "0"]), Runtime)).check()


def test_a_recipe_fills_settings_and_options_beside_it_win():
    from covidxray.cli.main import _config, build_parser

    args = build_parser().parse_args(["cv", "--data", "a", "--out", "o", "--recipe", "darkcovidnet-paper",
                                      "--epochs", "3"])
    config = _config(args)
    assert (config.model, config.lr_schedule, config.weight_decay, config.epochs) == ("darkcovidnet", "one-cycle",
                                                                                       0.01, 3)
    assert "recipe" not in given_settings(args)  # not a setting
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cv", "--data", "a", "--out", "o", "--recipe", "fastai"])


def test_help_shows_each_commands_default():
    probe_help = _parser("probe").format_help()
    assert f"(default: {DEFAULT_FRACTION})" in probe_help  # the probe blanks by default
    train_help = " ".join(_parser("train").format_help().split())
    assert "(default: 0.0)" in train_help and "turn off: rotation, zoom" in train_help


def test_data_is_required_unless_told():
    with pytest.raises(SystemExit):
        _parser("cv").parse_args(["--epochs", "2"])
    assert given_settings(_parser("train", data_required=False).parse_args(["--epochs", "2"])) == {"epochs": 2}


def test_lungs_train_options_are_generated_from_its_settings():
    from covidxray.cli.main import build_parser
    from covidxray.config import LungTrainConfig

    parser = build_parser()
    args = parser.parse_args(["lungs", "train", "--data", "a", "--data", "b", "--out", "run", "--widths", "4,8,16",
                              "--epochs", "2", "--no-augment"])
    assert given_settings(args, LungTrainConfig) == {"data": ["a", "b"], "widths": "4,8,16", "epochs": 2,
                                                     "augment": False}
    config = LungTrainConfig(**given_settings(args, LungTrainConfig)).check()
    assert config.widths == [4, 8, 16] and config.batch_size == 16 and config.image_size == 128 and config.threshold == 0.5  # the declared defaults
    lungs_train = parser._subparsers._group_actions[0].choices["lungs"]._subparsers._group_actions[0].choices["train"]
    shown = lungs_train.format_help()
    assert "(default: 8,16,32,48,64)" in shown and "(default: 48)" in shown and "--threshold" not in shown
    assert "required options (or --resume RUN_DIR):" in shown  # --data and --out, unless --resume (test_main)
    with pytest.raises(CovidXrayError, match="--widths 8,x: give whole numbers separated by commas"):
        LungTrainConfig(data=["a"], widths="8,x")

