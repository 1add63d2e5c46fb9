"""Command-line options generated from :class:`~covidxray.config.TrainConfig`'s fields.

Each training setting is declared once, in ``config.py``, with its help, choices and bounds;
this module turns the fields a command offers into ``argparse`` options. Their default is
``argparse.SUPPRESS``, so the parsed namespace holds exactly the options the user gave:
:func:`given_settings` returns them, and the command fills the rest from the field defaults
(or, for ``--resume``, checks them against the run's own).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from covidxray.config import TrainConfig, choices_of, option_name


def add_config_options(parser: argparse.ArgumentParser, command: str, *, data_required: bool = True) -> None:
    """Add an option for every :class:`TrainConfig` field that ``command`` offers."""
    for f in fields(TrainConfig):
        meta = f.metadata
        if command not in meta["commands"]:
            continue
        default = meta["command_defaults"].get(command, f.default if f.default is not MISSING else None)
        options = dict(default=argparse.SUPPRESS, dest=f.name, help=_help(meta["help"], default, meta["kind"]))
        if meta["kind"] is bool:
            flag = meta["flag"] or option_name(f.name)
            parser.add_argument(flag, action="store_false" if flag.startswith("--no-") else "store_true", **options)
            continue
        names = [option_name(f.name), *meta["aliases"]]
        if f.name == "data":
            parser.add_argument(*names, action="append", required=data_required, metavar=meta["metavar"], **options)
            continue
        parser.add_argument(*names, type=meta["kind"], choices=choices_of(f), metavar=meta["metavar"], **options)


def given_settings(args: argparse.Namespace) -> dict:
    """The :class:`TrainConfig` settings the user gave on the command line, by field name."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}


def _help(text: str, default, kind) -> str:
    if kind is bool or default is None:
        return text
    return f"{text} (default: {default})"
