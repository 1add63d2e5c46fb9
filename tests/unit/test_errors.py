"""covidxray.errors: the errors a user can fix, with messages that say how."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from covidxray.errors import CovidXrayError, DatasetError, ImageReadError, printable


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


def test_printable_shows_what_a_terminal_would_obey():
    assert printable("data/covid/\x1b[2J\x1b]0;pwned\x07x.png") == "data/covid/\\x1b[2J\\x1b]0;pwned\\x07x.png"
    assert printable("evil\u202egnp.exe") == "evil\\u202egnp.exe"  # right-to-left override
    assert printable(os.fsdecode(b"Bild \xe4.png")) == "Bild \\xe4.png"  # not UTF-8: the byte, as ls -b shows it
    assert printable(Path("Bild ä 肺.png")) == "Bild ä 肺.png"  # any script is kept
    assert printable(printable("a\x1bb\tc")) == printable("a\x1bb\tc") == "a\\x1bb\\tc"  # twice: no change
    assert printable(b"x\xff.png") == "x\\xff.png"


def test_every_error_message_is_printable():
    for error in (CovidXrayError("x\x1b[31m.png: bad"), DatasetError("x\x1b[31m.png: bad"),
                  ImageReadError("x\x1b[31m.png", "corrupt\x07")):
        assert "\x1b" not in str(error) and "\\x1b[31m" in str(error) and str(error).isprintable()
    assert str(DatasetError(os.fsdecode(b"\xe4.png") + ": bad")) == "\\xe4.png: bad"
