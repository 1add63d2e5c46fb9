"""Tests for covidxray.calibration: temperature scaling, ECE, the COVID threshold and the decision rule."""

from __future__ import annotations

import numpy as np
import pytest
from covidxray.calibration import (
    Calibration,
    choose_threshold,
    decide,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    scale,
)
from scipy.special import softmax

from covidxray.errors import CovidXrayError


def _overconfident(n=3000, true_temperature=2.5, seed=0):
    """Labels drawn from softmax(logits / T), reported as softmax(logits): over-confident by T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 3))
    calibrated = softmax(logits / true_temperature, axis=1)
    y = np.array([rng.choice(3, p=p) for p in calibrated])
    return y, softmax(logits, axis=1)


def test_fit_temperature_recovers_the_true_temperature_and_lowers_ece():
    y, reported = _overconfident()
    temperature = fit_temperature(y, reported)
    assert temperature == pytest.approx(2.5, rel=0.15)
    after = scale(reported, temperature)
    assert expected_calibration_error(y, after) < expected_calibration_error(y, reported) / 2
    np.testing.assert_array_equal(after.argmax(axis=1), reported.argmax(axis=1))  # decisions unchanged
    np.testing.assert_allclose(after.sum(axis=1), 1.0, atol=1e-9)


def test_well_calibrated_probabilities_keep_a_temperature_near_one():
    y, reported = _overconfident(true_temperature=1.0, seed=1)
    assert fit_temperature(y, reported) == pytest.approx(1.0, abs=0.15)


def test_ece_by_hand():
    y = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    # bin of 0.9: accuracy 2/3 vs confidence 0.9 (3 images); bin of 0.8: 1 vs 0.8 (1 image)
    assert expected_calibration_error(y, probabilities) == pytest.approx(0.75 * (0.9 - 2 / 3) + 0.25 * 0.2)
    bins = reliability_bins(y, probabilities)
    assert bins["count"] == [1, 3] and bins["accuracy"] == [1.0, pytest.approx(2 / 3)]


def test_threshold_reaches_the_target_sensitivity():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    p_covid = np.clip(rng.normal(0.3 + 0.4 * (y == 2), 0.2), 0, 1)
    for target in (0.8, 0.9, 0.95, 1.0):
        threshold = choose_threshold(y, p_covid, covid=2, target=target)
        sensitivity = np.mean(p_covid[y == 2] >= threshold)
        assert sensitivity >= target
        # the highest such threshold: any higher one misses the target
        assert np.mean(p_covid[y == 2] > threshold) < target


def test_threshold_errors():
    with pytest.raises(CovidXrayError, match="target-sensitivity"):
        choose_threshold(np.array([0, 1]), np.array([0.1, 0.9]), covid=1, target=1.5)
    with pytest.raises(CovidXrayError, match="COVID images in the validation"):
        choose_threshold(np.array([0, 0]), np.array([0.1, 0.9]), covid=1, target=0.9)


def test_decide_calls_covid_at_the_threshold_else_the_likeliest_other_class():
    probabilities = np.array([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6], [0.45, 0.3, 0.25]])
    np.testing.assert_array_equal(decide(probabilities, covid=2, threshold=None), [0, 1, 2, 0])
    np.testing.assert_array_equal(decide(probabilities, covid=2, threshold=0.3), [2, 2, 2, 0])
    np.testing.assert_array_equal(decide(probabilities, covid=2, threshold=0.7), [0, 1, 0, 0])


def test_calibration_round_trips_through_a_dict():
    calibration = Calibration(1.7, 0.31, 0.95)
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    assert Calibration.from_dict({}) == Calibration()
