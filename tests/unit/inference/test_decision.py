"""covidxray.inference.decision: the decision rule every command applies (temperature, then the COVID threshold)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidxray.errors import CovidXrayError
from covidxray.inference.decision import Calibration, decide


def test_decide_calls_covid_at_the_threshold_else_the_likeliest_other_class():
    probabilities = np.array([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6], [0.45, 0.3, 0.25]])
    np.testing.assert_array_equal(decide(probabilities, covid=2, threshold=None), [0, 1, 2, 0])
    np.testing.assert_array_equal(decide(probabilities, covid=2, threshold=0.3), [2, 2, 2, 0])
    np.testing.assert_array_equal(decide(probabilities, covid=2, threshold=0.7), [0, 1, 0, 0])


def test_calibration_round_trips_through_a_dict():
    calibration = Calibration(1.7, 0.31, 0.95)
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    assert Calibration.from_dict({}) == Calibration()


CLASSES = ("normal", "pneumonia", "covid")  # covid looked up by name, not position
RAW = np.array([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6], [0.45, 0.3, 0.25]])


def test_apply_scales_the_logits_and_keeps_the_top_class():
    calibrated = Calibration(temperature=2.0).apply(RAW)
    expected = np.sqrt(RAW) / np.sqrt(RAW).sum(axis=1, keepdims=True)  # softmax(log p / 2) = sqrt(p) normalised
    np.testing.assert_allclose(calibrated, expected, rtol=1e-6)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), RAW.argmax(axis=1))
    assert calibrated.max() < RAW.max()  # T > 1 softens
    np.testing.assert_array_equal(Calibration().apply(RAW), RAW)  # T = 1: unchanged


def test_decide_finds_covid_by_name():
    assert Calibration().decide(RAW, CLASSES).tolist() == [0, 1, 2, 0]
    assert Calibration(covid_threshold=0.3).decide(RAW, CLASSES).tolist() == [2, 2, 2, 0]
    reordered = ("covid", "normal", "pneumonia")  # the same rule with covid first
    assert Calibration(covid_threshold=0.3).decide(RAW[:, [2, 0, 1]], reordered).tolist() == [0, 0, 0, 1]
    # a task without a covid class ignores the threshold
    assert Calibration(covid_threshold=0.0).decide(RAW[:, :2], ("normal", "pneumonia")).tolist() == [0, 1, 0, 0]


def test_predict_is_apply_then_decide():
    calibration = Calibration(temperature=0.5, covid_threshold=0.4)
    probabilities, decided = calibration.predict(RAW, CLASSES)
    np.testing.assert_allclose(probabilities, calibration.apply(RAW))
    np.testing.assert_array_equal(decided, calibration.decide(probabilities, CLASSES))
    # T = 0.5 sharpens: covid's 0.3 in row 0 falls below 0.4, its 0.6 in row 2 rises above it
    assert decided.tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("values, message", [
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": -1.5}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": "2"}, "temperature"),
    ({"covid_threshold": 1.5}, "covid_threshold"),
    ({"covid_threshold": -0.1}, "covid_threshold"),
    ({"covid_threshold": "0.5"}, "covid_threshold"),
    ({"covid_threshold": [0.5]}, "covid_threshold"),
    ({"target_sensitivity": "high"}, "target_sensitivity"),
    ([1.0], "a JSON object is expected"),
])
def test_from_dict_refuses_anything_but_a_valid_rule(values, message):
    with pytest.raises(CovidXrayError, match=message) as raised:
        Calibration.from_dict(values, "run/calibration.json")
    assert str(raised.value).startswith("run/calibration.json: not a valid covidxray calibration")


def test_the_constructor_refuses_a_bad_temperature():
    with pytest.raises(ValueError, match="above 0"):
        Calibration(temperature=0.0)


def test_save_and_load_round_trip(tmp_path):
    calibration = Calibration(1.3, 0.42, 0.9)
    path = calibration.save(tmp_path)
    assert path == tmp_path / "calibration.json"
    assert json.loads(path.read_text()) == {"temperature": 1.3, "covid_threshold": 0.42, "target_sensitivity": 0.9}
    assert Calibration.load(tmp_path) == calibration


def test_load_without_a_file_decides_by_the_top_class(tmp_path):
    assert Calibration.load(tmp_path) == Calibration(1.0, None, None)


@pytest.mark.parametrize("text", ['{"temperature": NaN}', '{"temperature": Infinity}', "{not json", "[]",
                                  '{"covid_threshold": "high"}', '"\\u0000"', "\udcff"])
def test_load_refuses_a_broken_file(tmp_path, text):
    (tmp_path / "calibration.json").write_bytes(text.encode(errors="surrogateescape"))  # \udcff: a byte not UTF-8
    with pytest.raises(CovidXrayError, match="calibration.json: not a valid covidxray calibration"):
        Calibration.load(tmp_path)
