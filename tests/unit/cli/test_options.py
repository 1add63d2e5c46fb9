"""covidxray.cli.options: the command line's training options, generated from TrainConfig's fields."""

from __future__ import annotations

import argparse

import pytest

from covidxray.cli.options import add_config_options, given_settings
from covidxray.config import TrainConfig
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
    def options(command):
        return {o for action in _parser(command)._actions for o in action.option_strings}

    train, cv, probe = options("train"), options("cv"), options("probe")
    assert {"--distribute", "--devices", "--test-fraction"} <= train
    assert "--distribute" not in cv and "--test-fraction" not in cv and "--blank-fraction" not in cv
    assert "--distribute" not in probe and "--blank-fraction" in probe
    assert "--jit-compile" not in train | cv | probe and "--classes" not in train  # library only


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
    with pytest.raises(SystemExit):
        parser.parse_args(["lungs", "train", "--out", "run"])  # --data is required
    with pytest.raises(CovidXrayError, match="--widths 8,x: give whole numbers separated by commas"):
        LungTrainConfig(data=["a"], widths="8,x")

