"""Predictions: class probabilities for arrays, files and folders."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from covidxray.data.images import is_image_path, read_image, resize_square
from covidxray.errors import CovidXrayError, ImageReadError
from covidxray.progress import progress_bar

PREDICT_BATCH = 64


def predict_arrays(model, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Class probabilities ``(n, classes)`` for ``(n, size, size, 1)`` images in [0, 255]."""
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0))


def expand_paths(paths) -> list[Path]:
    """Files named, plus the image files inside folders named (recursively, sorted)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p) and not p.name.startswith("."))
        elif path.exists():
            found.append(path)
        else:
            raise CovidXrayError(f"{path}: no such file or folder")
    if not found:
        raise CovidXrayError(f"no image files in {', '.join(map(str, paths))}")
    return found


def predict_files(model, paths, classes, image_size: int, *, progress: bool | None = None, calibration=None):
    """Predict every file; returns (results, failures).

    ``results`` is a list of ``{"path", "label", "probabilities": {class: p}}``;
    ``failures`` maps each unreadable file to its error message. ``calibration`` (a run's
    :class:`~covidxray.calibration.Calibration`) scales the probabilities and sets the COVID threshold.
    """
    from covidxray.calibration import Calibration, decide, scale
    from covidxray.labels import COVID

    calibration = calibration or Calibration()
    def load(path):
        try:
            return resize_square(read_image(path), image_size)
        except ImageReadError as error:
            return error

    paths = [str(p) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        loaded = list(progress_bar(pool.map(load, paths), total=len(paths), desc="reading", unit="img",
                                   progress=progress))
    failures = {p: str(x) for p, x in zip(paths, loaded) if isinstance(x, ImageReadError)}
    good = [(p, x) for p, x in zip(paths, loaded) if not isinstance(x, ImageReadError)]
    if not good:
        return [], failures
    images = np.stack([x for _, x in good])[..., None]
    probabilities = scale(predict_arrays(model, images), calibration.temperature)
    decided = decide(probabilities, list(classes).index(COVID) if COVID in classes else None,
                     calibration.covid_threshold)
    results = [
        {"path": path, "label": classes[int(label)],
         "probabilities": {c: round(float(p), 6) for c, p in zip(classes, row)}}
        for (path, _), row, label in zip(good, probabilities, decided)
    ]
    return results, failures
