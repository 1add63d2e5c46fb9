"""Command-line options generated from the fields of :class:`~covidxray.config.TrainConfig`
(or of another settings dataclass declared the same way, :class:`~covidxray.config.LungTrainConfig`).

Each training setting is declared once, in ``config.py``, with its help, choices and bounds;
this module turns the fields a command offers into ``argparse`` options. Their default is
``argparse.SUPPRESS``, so the parsed namespace holds exactly the options the user gave:
:func:`given_settings` returns them, and the command fills the rest from the field defaults
(or, for ``--resume``, checks them against the run's own).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path

from covidxray.config import RECIPES, TrainConfig, choices_of, option_name, recipe_help
from covidxray.errors import CovidXrayError

#: How an option's value is shown in the help, by type.
METAVARS = {int: "N", float: "F", str: "VALUE"}


def add_config_options(parser: argparse.ArgumentParser, command: str, *, data_required: bool = True,
                       settings=TrainConfig) -> None:
    """Add an option for every field of ``settings`` (a dataclass of ``setting()`` fields) that ``command`` offers."""
    for f in fields(settings):
        meta = f.metadata
        if command not in meta["commands"]:
            continue
        default = meta["command_defaults"].get(command, f.default if f.default is not MISSING else f.default_factory())
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        if meta["kind"] is bool:
            flag = meta["flag"] or option_name(f.name)
            off = flag.startswith("--no-")
            parser.add_argument(flag, action="store_false" if off else "store_true", default=argparse.SUPPRESS,
                                dest=f.name, help=f"turn off: {meta['help']}" if off else meta["help"])
            continue
        names = [option_name(f.name), *meta["aliases"]]
        options = dict(default=argparse.SUPPRESS, dest=f.name, help=_help(meta["help"], default),
                       metavar=meta["metavar"] or METAVARS.get(meta["kind"]))
        if f.name == "data":
            parser.add_argument(*names, action="append", required=data_required, **options)
            continue
        choices = choices_of(f)
        if choices is not None:
            options["metavar"] = None  # argparse shows {a,b,c}
        parser.add_argument(*names, type=meta["kind"], choices=choices, **options)


def add_recipe_option(parser: argparse.ArgumentParser) -> None:
    """``--recipe NAME``: not a setting (a run does not store it) but a named set of them, which
    :meth:`~covidxray.config.TrainConfig.for_command` fills where the options given beside it do not."""
    parser.add_argument(
        "--recipe", choices=tuple(RECIPES), default=None,
        help="a named set of settings; options given beside it win. darkcovidnet-paper: "
        + recipe_help("darkcovidnet-paper") + " (Ozturk et al. 2020's training); source-robust: "
        + recipe_help("source-robust") + " (best on sources held out whole; the default preset's)")


def given_settings(args: argparse.Namespace, settings=TrainConfig) -> dict:
    """The settings (fields of ``settings``) the user gave on the command line, by field name."""
    return {f.name: getattr(args, f.name) for f in fields(settings) if hasattr(args, f.name)}


def _help(text: str, default) -> str:
    return text if default in (None, "") else f"{text} (default: {default})"


def resuming(args) -> bool:
    """For a command that trains a run or, with ``--resume RUN_DIR``, continues one (``train``, ``lungs
    train``): True with ``--resume`` (which continues that run in place: no other ``--out``, no
    ``--overwrite``); otherwise ``--data`` and ``--out`` are required, and their absence is a usage error."""
    if getattr(args, "resume", None):
        if args.overwrite or (args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve()):
            raise CovidXrayError(f"--resume {args.resume} continues that run in place; drop --out and --overwrite")
        return True
    missing = [f"--{name}" for name in ("data", "out") if getattr(args, name, None) is None]
    if missing:
        args.parser.error(f"the following arguments are required: {', '.join(missing)} (or --resume RUN_DIR)")
    return False
