"""covidxray.cli.main: the parser, and the commands that need no model (models, --version)."""

from __future__ import annotations

import pytest

from covidxray.cli import build_parser, main
from covidxray.models import DEFAULT_MODEL, list_models
from covidxray.presets import DEFAULT_PRESET
from covidxray.version import __version__


def test_every_command_is_parsed_to_its_handler():
    parser = build_parser()
    expected = {"train": "run_train", "cv": "run_cv", "probe": "run_probe", "evaluate": "run_evaluate",
                "predict": "run_predict", "serve": "run_serve", "export": "run_export", "models": "run_models"}
    argv = {"train": ["train", "--resume", "r"], "cv": ["cv", "--data", "d", "--out", "o"],
            "probe": ["probe", "--data", "d", "--out", "o"], "evaluate": ["evaluate", "--data", "d"],
            "predict": ["predict", "x.png"], "serve": ["serve"], "export": ["export", "--run", "r"],
            "models": ["models"]}
    for command, handler in expected.items():
        assert parser.parse_args(argv[command]).handler.__name__ == handler, command
    args = parser.parse_args(["data", "shard", "--data", "a", "--data", "b", "--out", "s", "--image-size", "64"])
    assert args.handler.__name__ == "run_shard" and args.data == ["a", "b"] and args.image_size == 64


def test_run_options_default_to_the_preset():
    args = build_parser().parse_args(["predict", "x.png", "y.png"])
    assert args.run is None and args.preset is None and args.paths == ["x.png", "y.png"] and args.engine == "keras"
    args = build_parser().parse_args(["evaluate", "--data", "d", "--preset", DEFAULT_PRESET, "--per-source"])
    assert args.preset == DEFAULT_PRESET and args.per_source and not args.include_seen


def test_version_and_bad_commands(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"covidxray {__version__}\n"
    with pytest.raises(SystemExit) as done:
        main(["nosuchcommand"])
    assert done.value.code == 2 and "invalid choice: 'nosuchcommand'" in capsys.readouterr().err


def test_models_lists_models_and_presets(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from covidxray.presets import LUNG_SEGMENTER, list_presets

    assert DEFAULT_PRESET in list_presets()
    lines = [line for line in lines if not line.startswith("    ")]  # each preset's description is indented below it
    assert [line.split()[0] for line in lines] == [*list_models(), *(f"preset:{p}" for p in list_presets()),
                                                   *(f"preset:{p}" for p in list_presets(LUNG_SEGMENTER))]
    assert next(line for line in lines if line.startswith(DEFAULT_MODEL)).endswith("(default)")
    defaults = [line for line in lines if line.endswith("(default for predict, evaluate and serve)")]
    assert defaults == [f"preset:{DEFAULT_PRESET} (default for predict, evaluate and serve)"]


def test_train_needs_data_and_out_or_resume(capsys):
    with pytest.raises(SystemExit):
        main(["--quiet", "train", "--data", "d"])
    assert "--out (or --resume RUN_DIR)" in capsys.readouterr().err
    assert main(["--quiet", "train", "--resume", "r", "--out", "elsewhere"]) == 2
    assert "continues that run in place; drop --out and --overwrite" in capsys.readouterr().err


def test_shard_image_size_is_checked_before_reading(tmp_path, capsys):
    assert main(["--quiet", "data", "shard", "--data", str(tmp_path), "--out", str(tmp_path / "s"),
                 "--image-size", "8"]) == 2
    assert "--image-size must be in [32, 1024]; got 8" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_cv_fold_options_reach_the_library_and_a_partial_run_says_what_is_left(monkeypatch, capsys):
    import covidxray.training.cv as cv_module

    calls = []
    monkeypatch.setattr(cv_module, "cross_validate", lambda config, out, folds, **kw: calls.append((folds, kw["only"]))
                        or {"finished": [1, 3], "missing": [2]})
    assert main(["cv", "--data", "d", "--out", "o", "--folds", "3", "--fold", "1", "--fold", "3"]) == 0
    assert calls == [(3, [1, 3])]
    assert ("finished folds: 1, 3; not yet: 2. Run the command again without --fold to train those and pool every fold"
            in capsys.readouterr().out)


@pytest.mark.parametrize("argv, message", [
    (["train"], "the following arguments are required: --data, --out (or --resume RUN_DIR)"),
    (["train", "--data", "d", "--out", "o", "--epochs", "0"], "--epochs must be at least 1; got 0"),
    (["cv", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size must be at least 1; got 0"),
    (["probe", "--data", "d", "--out", "o", "--val-fraction", "0.01"], "--val-fraction must be 0"),
    (["train", "--resume", "r", "--overwrite"], "continues that run in place"),
    (["lungs", "train", "--out", "o"], "the following arguments are required: --data (or --resume RUN_DIR)"),
    (["lungs", "train", "--resume", "r", "--out", "o"], "continues that run in place"),
])
def test_training_commands_answer_bad_arguments_before_the_backend_loads(argv, message, monkeypatch, capsys):
    import importlib

    cli_main = importlib.import_module("covidxray.cli.main")  # the module: covidxray.cli.main is also the function
    monkeypatch.setattr(cli_main, "import_keras_quietly", lambda: pytest.fail("the backend was imported first"))
    try:
        code = main(["--quiet", *argv])
    except SystemExit as done:
        code = done.code
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["train", "--data", "d", "--out", "o"],
    ["train", "--resume", "r"],
    ["cv", "--data", "d", "--out", "o"],
    ["probe", "--data", "d", "--out", "o"],
])
def test_track_mlflow_without_mlflow_says_how_to_install_it_before_the_backend_loads(argv, monkeypatch, capsys,
                                                                                    tmp_path):
    import importlib
    import sys

    cli_main = importlib.import_module("covidxray.cli.main")
    monkeypatch.setattr(cli_main, "import_keras_quietly", lambda: pytest.fail("the backend was imported first"))
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", *argv, "--track", "mlflow"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "covidxray: error: --track mlflow needs MLflow (mlflow not installed): pip install 'covidxray[mlflow]'"]
    assert list(tmp_path.iterdir()) == []  # no run folder, no store


def test_track_reaches_the_library(monkeypatch):
    import importlib

    import covidxray.training.train as train_module

    pytest.importorskip("mlflow", reason="pip install 'covidxray[mlflow]'")
    cli_main = importlib.import_module("covidxray.cli.main")
    calls = []
    monkeypatch.setattr(train_module, "train", lambda config, out, **kw: calls.append(("train", kw["track"])) or {})
    monkeypatch.setattr(train_module, "resume", lambda run, **kw: calls.append(("resume", kw["track"])) or {})
    monkeypatch.setattr(cli_main, "print_run_summary", lambda metrics: None)
    for argv in (["--data", "d", "--out", "o"], ["--data", "d", "--out", "o", "--track", "mlflow"],
                 ["--resume", "r", "--track", "mlflow"]):
        assert main(["--quiet", "train", *argv]) == 0
    assert calls == [("train", "none"), ("train", "mlflow"), ("resume", "mlflow")]
    with pytest.raises(SystemExit):
        main(["--quiet", "train", "--data", "d", "--out", "o", "--track", "wandb"])


def _commands(parser, path=""):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}".strip())
    if path and not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        yield path, parser


def test_every_command_help_ends_with_examples_and_shows_its_required_options():
    from covidxray.cli.main import EXAMPLES, build_parser

    commands = dict(_commands(build_parser()))
    assert set(commands) == set(EXAMPLES)  # a new command needs its examples
    for path, parser in commands.items():
        text = parser.format_help()
        assert text.rstrip().endswith(EXAMPLES[path][-1]) and "\nexamples:\n" in text, path
        required = [a for a in parser._actions if a.required and a.option_strings]
        if required:
            head, _, tail = text.partition("required options")
            assert all(a.option_strings[0] in tail.split("\n\n")[0] for a in required), path
    assert "required options (or --resume RUN_DIR):\n  --data PATH" in commands["train"].format_help()
    assert "port to listen on" in commands["serve"].format_help()


def test_models_says_a_line_on_each_preset(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"preset:{DEFAULT_PRESET} (default for predict, evaluate and serve)\n    three-class, darkcovidnet, ieee8023, " \
           "radiography-db, recipe source-robust; own test split: accuracy 79.7%, COVID AUC 0.948; where it fails: " \
           f"{DEFAULT_PRESET}/MODEL_CARD.md" in out
    assert "lung segmenter; held-out Dice" in out
