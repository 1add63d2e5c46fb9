"""Progress bars for long work: shown on a terminal, silent in logs and with ``--quiet``.

Every long loop (decoding, downloading, predicting many files, cross-validation) goes through
:func:`progress_bar`, so one rule decides whether a bar appears::

    for item in progress_bar(items, desc="decoding", unit="img", progress=progress):
        ...

``progress``: ``None`` (the default) shows the bar only when stderr is a terminal; ``False``
never shows it (``covidxray --quiet``); ``True`` shows it even when stderr is not a terminal.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar_enabled(progress: bool | None) -> bool:
    """Whether a bar is drawn: ``progress`` if given, else whether stderr is a terminal."""
    if progress is not None:
        return bool(progress)
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable=None, *, progress: bool | None = None, **options) -> tqdm:
    """A ``tqdm`` bar over ``iterable`` (or a manual one, updated with ``.update(n)``).

    ``options`` go to tqdm (``desc``, ``total``, ``unit``, ``unit_scale`` ...). A disabled bar
    still iterates and counts, so callers need no second code path.
    """
    return tqdm(iterable, disable=not bar_enabled(progress), file=sys.stderr, dynamic_ncols=True, **options)
