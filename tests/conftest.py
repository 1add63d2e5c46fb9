"""Fixtures shared by every test. Helpers (dataset makers, image writers ...) live in helpers.py."""

from __future__ import annotations

import pytest

import covidxray  # noqa: F401  (chooses the Keras backend before any test imports Keras)
from helpers import make_dataset, tiny_body


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test decodes into its own cache, never the user's ~/.cache."""
    monkeypatch.setenv("COVIDXRAY_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def progress_follows_the_terminal():
    """Every test starts with the progress switch at its default (an in-process ``main(["--quiet", ...])``
    turns it off for the rest of the process, as it should for one command)."""
    from covidxray.progress import set_progress

    set_progress(None)
    yield
    set_progress(None)


@pytest.fixture
def dataset(tmp_path):
    """A three-class synthetic dataset with patient ids (12 images per class)."""
    return make_dataset(tmp_path / "data")


@pytest.fixture
def tiny_model(monkeypatch):
    """``tiny``: a registered model (32 px) that trains in seconds, removed from the registry afterwards."""
    from covidxray.models import MODELS, ModelSpec

    monkeypatch.setitem(MODELS, "tiny", ModelSpec(tiny_body, 32, True, description="a test model"))
    return "tiny"


@pytest.fixture
def fast_bootstrap(monkeypatch):
    """95% intervals from 100 resamples instead of 1000, for tests of what is around them (training, cv)."""
    from functools import partial

    import covidxray.evaluation.scoring as scoring
    from covidxray.evaluation.metrics import classification_metrics

    monkeypatch.setattr(scoring, "classification_metrics", partial(classification_metrics, bootstrap=100))


def pytest_collection_modifyitems(config, items):
    """Slow tests first (stable otherwise): with one worker per core (``make test``) the longest
    ones, the notebook above all, then run beside the rest instead of alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
