"""Fixtures shared by every test. Helpers (dataset makers, image writers ...) live in helpers.py."""

from __future__ import annotations

import pytest

import covidxray  # noqa: F401  (chooses the Keras backend before any test imports Keras)
from helpers import make_dataset


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test decodes into its own cache, never the user's ~/.cache."""
    monkeypatch.setenv("COVIDXRAY_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def dataset(tmp_path):
    """A three-class synthetic dataset with patient ids (12 images per class)."""
    return make_dataset(tmp_path / "data")
