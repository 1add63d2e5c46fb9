"""The ``covidxray`` command line (``covidxray --help``)."""

from covidxray.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
