"""Tests for covidxray.labels: the alias table and the tasks."""

from __future__ import annotations

import pytest

from covidxray.errors import CovidXrayError
from covidxray.labels import ALIASES, COVID, NORMAL, PNEUMONIA, TASKS, canonical_label, task_classes


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        # DarkCovidNet folder names
        ("Covid-19", COVID),
        ("No_findings", NORMAL),
        ("Pneumonia", PNEUMONIA),
        # PyImageSearch folder names
        ("covid", COVID),
        ("normal", NORMAL),
        ("COVID", COVID),
        ("Normal", NORMAL),
        # ieee8023 findings, flat and hierarchical
        ("COVID-19", COVID),
        ("COVID-19, ARDS", COVID),
        ("Pneumonia/Viral/COVID-19", COVID),
        ("No Finding", NORMAL),
        ("Pneumonia/Bacterial/Klebsiella", PNEUMONIA),
        ("Pneumonia/Viral/SARS", PNEUMONIA),
        ("Pneumonia/Fungal/Pneumocystis", PNEUMONIA),
        ("SARS", PNEUMONIA),
        ("Klebsiella", PNEUMONIA),
        ("Streptococcus", PNEUMONIA),
        ("E.Coli", PNEUMONIA),
        ("Pneumocystis", PNEUMONIA),
        ("ARDS", PNEUMONIA),
        # punctuation and case are folded
        ("  covid_19 ", COVID),
        ("NO-FINDINGS", NORMAL),
    ],
)
def test_canonical_label_maps_dataset_labels(label, expected):
    assert canonical_label(label) == expected


@pytest.mark.parametrize("label", ["", "unknown", "todo", "Tuberculosis", "cat", "lateral", "123"])
def test_unknown_labels_map_to_none(label):
    assert canonical_label(label) is None


def test_every_alias_maps_to_a_class_and_onto_itself():
    classes = {COVID, NORMAL, PNEUMONIA}
    assert set(ALIASES.values()) == classes
    for alias, target in ALIASES.items():
        assert canonical_label(alias) == target, alias
    for name in classes:
        assert canonical_label(name) == name


def test_task_classes():
    assert task_classes("binary") == (COVID, NORMAL)
    assert task_classes("three-class") == (COVID, NORMAL, PNEUMONIA)
    assert set(TASKS) == {"binary", "three-class"}


@pytest.mark.parametrize("task", ["four-class", "", "Binary"])
def test_unknown_task_raises_naming_the_choices(task):
    with pytest.raises(CovidXrayError) as raised:
        task_classes(task)
    message = str(raised.value)
    assert repr(task) in message
    assert "binary" in message and "three-class" in message


@pytest.mark.parametrize("label", ["COVID-negative", "covid_neg", "COVID-19 negative", "suspected COVID-19",
                                   "Pneumonia negative", "non-covid", "positive", "negative", "todo"])
def test_doubtful_labels_are_never_guessed(label):
    assert canonical_label(label) is None


def test_every_ieee8023_finding_in_the_shared_data_maps():
    import pandas as pd

    from helpers import shared_data_dir

    findings = pd.read_csv(shared_data_dir() / "ieee8023" / "metadata.csv", dtype=str, keep_default_na=False)["finding"]
    assert {f: canonical_label(f) for f in findings.unique() if canonical_label(f) is None} == {}


def test_covid_index_is_found_by_name():
    from covidxray.labels import covid_index

    assert covid_index(("covid", "normal")) == 0 and covid_index(["normal", "pneumonia", "covid"]) == 2
    assert covid_index(("normal", "pneumonia")) is None
