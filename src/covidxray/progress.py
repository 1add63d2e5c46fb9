"""Progress bars for long work: shown on a terminal, silent in logs and with ``--quiet``.

Every long loop (decoding, downloading, predicting many files, cross-validation) goes through
:func:`progress_bar`, so one rule decides whether a bar appears, and one switch sets it for the
whole process, as ``keras.config.disable_interactive_logging()`` does for Keras::

    covidxray.progress.set_progress(False)   # never (covidxray --quiet); True: always; None: on a terminal
    for item in progress_bar(items, desc="decoding", unit="img"):
        ...
"""

from __future__ import annotations

import sys

from tqdm import tqdm

_SHOWN: dict[str, bool | None] = {"progress": None}  # the switch: None follows the terminal


def set_progress(shown: bool | None) -> None:
    """Draw progress bars always (True), never (False), or when stderr is a terminal (None, the default)."""
    _SHOWN["progress"] = shown


def bar_enabled() -> bool:
    """Whether a bar is drawn: as :func:`set_progress` said, else whether stderr is a terminal."""
    if _SHOWN["progress"] is not None:
        return bool(_SHOWN["progress"])
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable=None, **options) -> tqdm:
    """A ``tqdm`` bar over ``iterable`` (or a manual one, updated with ``.update(n)``).

    ``options`` go to tqdm (``desc``, ``total``, ``unit``, ``unit_scale`` ...; ``disable=True`` hides
    this bar whatever the switch says). A disabled bar still iterates and counts, so callers need no
    second code path.
    """
    disable = options.pop("disable", False) or not bar_enabled()
    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, **options)
