"""Errors that a user can fix. The CLI prints them as one line, without a traceback.

A path goes into a message through :func:`printable`, so that a file name holding terminal
escape sequences or bytes that are not UTF-8 is shown, not obeyed (or crashing the print).
"""

from __future__ import annotations

import os


class CovidXrayError(Exception):
    """A mistake in the input (a file, a folder, an option) that the user can fix.

    The message names the file or option and says what to do about it. It is kept printable
    (:func:`printable`): a file name cannot put escape sequences on the user's terminal.
    """

    def __init__(self, message="", *args):
        super().__init__(printable(message), *args)


class ImageReadError(CovidXrayError):
    """An image file that cannot be decoded."""

    def __init__(self, path, reason: str, fix: str = "replace or remove the file"):
        self.path = str(path)
        self.reason = reason = " ".join(str(reason).split())  # one line, whatever a decoder's message held
        super().__init__(printable(f"{path}: {reason}; {fix}"))


class DatasetError(CovidXrayError):
    """A dataset whose layout, labels or contents cannot be used."""


def printable(text) -> str:
    """``text`` (a str or a path) safe to print: control characters and other unprintable ones as
    Python escapes (``\\x1b``, ``\\u202e``), and the bytes of a file name that is not UTF-8 (which
    Python holds as lone surrogates) as ``\\xe9``. Printable text, any script, is kept as it is;
    applying it twice changes nothing."""
    text = os.fsdecode(text) if isinstance(text, bytes | os.PathLike) else str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode keeps it (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")
