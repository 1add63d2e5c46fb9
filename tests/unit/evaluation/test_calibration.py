"""covidxray.evaluation.calibration: fitting the temperature and the COVID threshold, and the ECE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from covidxray.errors import CovidXrayError
from covidxray.evaluation.calibration import (
    KEEP_TEMPERATURE_MARGIN,
    TemperatureChoice,
    calibration_summary,
    choose_temperature,
    choose_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    reliability_bins,
    run_calibration,
)
from covidxray.evaluation.metrics import cross_entropy
from covidxray.inference.decision import Calibration, scale


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




def test_fit_calibration_sets_the_threshold_only_for_a_target():
    y, reported = _overconfident(n=600, seed=2)
    classes = ("covid", "normal", "pneumonia")
    plain = fit_calibration(y, reported, classes, None)
    assert plain.covid_threshold is None and plain.target_sensitivity is None
    assert plain.temperature == pytest.approx(fit_temperature(y, reported))
    targeted = fit_calibration(y, reported, classes, 0.9)
    assert targeted.temperature == plain.temperature and targeted.target_sensitivity == 0.9
    covid = scale(reported, targeted.temperature)[:, 0]
    assert np.mean(covid[y == 0] >= targeted.covid_threshold) >= 0.9  # the target is met on these images
    decided = targeted.decide(scale(reported, targeted.temperature), classes)
    assert np.mean(decided[y == 0] == 0) >= 0.9


def test_fit_calibration_needs_a_covid_class_for_a_target():
    y, reported = _overconfident(n=60, seed=3)
    with pytest.raises(CovidXrayError, match="this task has no covid class"):
        fit_calibration(y, reported, ("normal", "pneumonia", "other"), 0.9)
    with pytest.raises(CovidXrayError, match="needs validation images"):
        fit_temperature(np.array([], dtype=int), np.zeros((0, 3)))


def test_calibration_summary_before_and_after():
    y, reported = _overconfident(seed=4)
    calibration = Calibration(temperature=2.5)
    summary = calibration_summary(y, reported, calibration)
    assert summary["ece_before"] == pytest.approx(expected_calibration_error(y, reported))
    assert summary["ece_after"] == pytest.approx(expected_calibration_error(y, scale(reported, 2.5)))
    assert summary["ece_after"] < summary["ece_before"] / 2 and summary["loss_after"] < summary["loss_before"]
    assert sum(summary["bins_before"]["count"]) == sum(summary["bins_after"]["count"]) == len(y)


def test_the_temperature_is_kept_only_where_it_lowers_the_validation_loss_by_the_margin():
    assert KEEP_TEMPERATURE_MARGIN == 0.01
    assert TemperatureChoice(2.0, loss_before=1.0, loss_after=0.99).kept  # exactly 1% lower
    assert not TemperatureChoice(2.0, loss_before=1.0, loss_after=0.9901).kept
    assert TemperatureChoice(2.0, 1.0, 0.9901).temperature == 1.0 and TemperatureChoice(2.0, 1.0, 0.5).temperature == 2.0
    assert TemperatureChoice(2.0, 1.0, 0.9, margin=0.2).temperature == 1.0
    assert TemperatureChoice(2.0, 1.0, 0.5).to_dict() == {"fitted_temperature": 2.0, "temperature_kept": True,
                                                          "keep_margin": KEEP_TEMPERATURE_MARGIN}


def _splits(true_temperature: float, seed: int, n: int = 120) -> tuple[dict, dict]:
    y, raw = _overconfident(n=3 * n, true_temperature=true_temperature, seed=seed)
    names = ("train", "validation", "test")
    return ({name: y[i * n:(i + 1) * n] for i, name in enumerate(names)},
            {name: raw[i * n:(i + 1) * n] for i, name in enumerate(names)})


def test_run_calibration_keeps_a_temperature_that_helps():
    y, raw = _splits(true_temperature=2.5, seed=5)  # over-confident: scaling lowers the loss a lot
    calibration, entry = run_calibration(y, raw, ("covid", "normal", "pneumonia"), None)
    choice = choose_temperature(y["validation"], raw["validation"])
    assert choice.kept and choice.loss_after < 0.9 * choice.loss_before
    assert calibration.temperature == entry["temperature"] == entry["fitted_temperature"] == choice.fitted > 1.5
    assert entry["temperature_kept"] is True and entry["keep_margin"] == KEEP_TEMPERATURE_MARGIN
    for split in ("validation", "test"):  # before: the model's own; after: the fitted temperature's
        assert entry[split]["ece_before"] == pytest.approx(expected_calibration_error(y[split], raw[split]))
        assert entry[split]["ece_after"] == pytest.approx(expected_calibration_error(y[split], scale(raw[split], choice.fitted)))
    assert "train" not in entry


def test_run_calibration_drops_a_temperature_that_barely_moves_the_validation_loss():
    y, raw = _splits(true_temperature=1.0, seed=6, n=60)  # calibrated already: the fit chases noise
    calibration, entry = run_calibration(y, raw, ("covid", "normal", "pneumonia"), 0.9)
    fitted = entry["fitted_temperature"]
    assert fitted != 1.0 and entry["temperature_kept"] is False
    assert cross_entropy(y["validation"], scale(raw["validation"], fitted)) > 0.99 * cross_entropy(y["validation"], raw["validation"])
    assert calibration.temperature == entry["temperature"] == 1.0  # the model's own probabilities
    covid = raw["validation"][:, 0]  # the threshold is chosen on the probabilities the run keeps
    assert calibration.covid_threshold == choose_threshold(y["validation"], covid, 0, 0.9)
    for split in ("validation", "test"):  # the report still shows what the fitted temperature would have done
        assert entry[split]["ece_after"] == pytest.approx(expected_calibration_error(y[split], scale(raw[split], fitted)))


def test_run_calibration_without_a_validation_split_keeps_the_model_s_own_probabilities():
    y, raw = _splits(true_temperature=2.5, seed=7)
    del y["validation"], raw["validation"]
    calibration, entry = run_calibration(y, raw, ("covid", "normal", "pneumonia"), None)
    assert calibration.temperature == 1.0 and "fitted_temperature" not in entry
    assert entry["test"]["ece_after"] == entry["test"]["ece_before"]
