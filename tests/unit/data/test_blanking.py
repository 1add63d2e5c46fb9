"""covidxray.data.blanking: the shortcut probe's blanked lung field."""

from __future__ import annotations

import numpy as np
import pytest

from covidxray.data.blanking import DEFAULT_FRACTION, blank_center


def test_blank_center_hides_the_centre_only():
    images = np.full((2, 40, 40, 1), 200, dtype=np.uint8)
    blanked = blank_center(images, 0.5)
    assert blanked[:, 10:30, 10:30].max() == 0
    assert (blanked[:, :10] == 200).all() and (blanked[:, 30:] == 200).all() and (blanked[:, :, :10] == 200).all()
    assert (blanked[:, :, 30:] == 200).all() and (blanked == 0).sum() == 2 * 20 * 20
    assert (images == 200).all()  # the input is left alone


def test_the_default_box_and_other_shapes():
    assert DEFAULT_FRACTION == 0.75
    blanked = blank_center(np.ones((1, 8, 16), dtype=np.uint8))  # (n, h, w), not square
    assert blanked[0].tolist() == [[1] * 16] + [[1] * 2 + [0] * 12 + [1] * 2] * 6 + [[1] * 16]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_fractions_outside_the_open_interval_are_refused(fraction):
    with pytest.raises(ValueError, match="fraction must lie in \\(0, 1\\)"):
        blank_center(np.zeros((1, 4, 4)), fraction)
