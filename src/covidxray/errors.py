"""Errors that a user can fix. The CLI prints them as one line, without a traceback."""

from __future__ import annotations


class CovidXrayError(Exception):
    """A mistake in the input (a file, a folder, an option) that the user can fix.

    The message names the file or option and says what to do about it.
    """


class ImageReadError(CovidXrayError):
    """An image file that cannot be decoded."""

    def __init__(self, path, reason: str, fix: str = "replace or remove the file"):
        self.path = str(path)
        self.reason = reason = " ".join(str(reason).split())  # one line, whatever a decoder's message held
        super().__init__(f"{path}: {reason}; {fix}")


class DatasetError(CovidXrayError):
    """A dataset whose layout, labels or contents cannot be used."""
