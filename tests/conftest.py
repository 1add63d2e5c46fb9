"""Shared fixtures: a tiny synthetic X-ray dataset, and an isolated image cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import covidxray  # noqa: F401  (chooses the Keras backend before any test imports Keras)

CLASSES = ("covid", "normal", "pneumonia")


def synthetic_xray(label: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A grayscale image whose class is easy to see: a bright disc, flat noise, or stripes."""
    image = rng.normal(90, 12, (size, size))
    yy, xx = np.mgrid[:size, :size]
    if label == "covid":
        image[(yy - size / 3) ** 2 + (xx - size / 3) ** 2 < (size / 5) ** 2] = 230
    elif label == "pneumonia":
        image[(yy // 4) % 2 == 0] += 110
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(root, per_class: int = 12, classes=CLASSES, seed: int = 0, manifest: bool = True):
    """Class folders of synthetic images, two images per patient, plus a manifest.csv."""
    rng = np.random.default_rng(seed)
    rows = ["path,label,patient_id,source"]
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"{label}/{label}_{i:03d}.png"
            Image.fromarray(synthetic_xray(label, rng)).save(root / name)
            rows.append(f"{name},{label},{label}-p{i // 2},synthetic")
    if manifest:
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test decodes into its own cache, never the user's ~/.cache."""
    monkeypatch.setenv("COVIDXRAY_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def dataset(tmp_path):
    """A three-class synthetic dataset with patient ids (12 images per class)."""
    return make_dataset(tmp_path / "data")
