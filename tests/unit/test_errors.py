"""covidxray.errors: the errors a user can fix, with messages that say how."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidxray.errors import CovidXrayError, DatasetError, ImageReadError


def test_image_read_error_names_the_file_the_reason_and_the_fix():
    error = ImageReadError(Path("data/x.png"), "corrupt or truncated image")
    assert str(error) == "data/x.png: corrupt or truncated image; replace or remove the file"
    assert error.path == "data/x.png" and error.reason == "corrupt or truncated image"
    assert str(ImageReadError("y.dcm", "no such file", "check the path")) == "y.dcm: no such file; check the path"


def test_every_error_is_a_covidxray_error():
    assert issubclass(ImageReadError, CovidXrayError) and issubclass(DatasetError, CovidXrayError)
    assert not issubclass(CovidXrayError, (OSError, ValueError))  # never confused with a crash
    with pytest.raises(CovidXrayError, match="no images"):
        raise DatasetError("no images")


def test_image_read_error_is_one_line_whatever_the_decoder_said():
    error = ImageReadError("x.dcm", "cannot decode (Unable to decode:\n  pillow: cannot load this image)")
    assert str(error) == "x.dcm: cannot decode (Unable to decode: pillow: cannot load this image); replace or remove the file"
