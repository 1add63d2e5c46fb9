"""Lung-mask datasets: which X-ray goes with which mask, read and checked, split by patient.

A mask dataset is a folder with ``images/`` and ``lung-masks/``: ``lung-masks/<stem>.png`` is the
mask of ``images/<stem>.<any image suffix>``, the same size as its image, 255 (any value above 127)
inside a lung and 0 elsewhere. An optional ``metadata.csv`` gives patient ids: the ieee8023
layout's ``filename`` and ``patientid`` columns (or ``patient_id``); without one (JSRT: every film
is its own patient) each image is its own patient. :func:`mask_table` reads one or more such
folders into one table (``path, mask_path, patient_id, source``; ``source`` is the folder's name),
:func:`split_masks` assigns train / validation / test by patient, stratified by source, and
:func:`load_pairs` decodes the pairs at one size for training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from covidxray.data.images import IMAGE_SUFFIXES, read_image, resize_square
from covidxray.errors import DatasetError, ImageReadError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

IMAGES, MASKS, METADATA = "images", "lung-masks", "metadata.csv"
COLUMNS = ("path", "mask_path", "patient_id", "source")


def mask_table(roots) -> pd.DataFrame:
    """The image/mask pairs of every folder in ``roots`` (one path or a list), in one table."""
    import pandas as pd

    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if not roots:
        raise DatasetError("no lung-mask dataset given; pass a folder with images/ and lung-masks/")
    tables = [_folder_table(Path(root)) for root in roots]
    table = pd.concat(tables, ignore_index=True)
    duplicated = table["path"].duplicated()
    if duplicated.any():
        raise DatasetError(f"{table['path'][duplicated].iloc[0]}: given twice; name each mask dataset once")
    return table


def _folder_table(root: Path) -> pd.DataFrame:
    import pandas as pd

    images, masks = root / IMAGES, root / MASKS
    for folder in (images, masks):
        if not folder.is_dir():
            raise DatasetError(f"{root}: no {folder.name}/ folder; a lung-mask dataset holds images/ and "
                               "lung-masks/ (<stem>.png, the size of images/<stem>.*)")
    by_stem = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    patients = _patient_ids(root)
    rows, orphans = [], []
    for mask in sorted(masks.glob("*.png")):
        image = by_stem.get(mask.stem)
        if image is None:
            orphans.append(mask.name)
            continue
        patient = patients.get(image.name) or f"{root.name}-{mask.stem}"
        rows.append((str(image), str(mask), str(patient), root.name))
    if orphans:
        log.warning("%s: %d mask(s) without an image in %s/ left out (%s%s)", masks, len(orphans), IMAGES,
                    ", ".join(orphans[:3]), ", ..." if len(orphans) > 3 else "")
    if not rows:
        raise DatasetError(f"{masks}: no mask matches an image in {images}; masks are <stem>.png for images/<stem>.*")
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _patient_ids(root: Path) -> dict[str, str]:
    """Image file name -> patient id, from ``metadata.csv`` where it has them; else empty."""
    path = root / METADATA
    if not path.is_file():
        return {}
    import pandas as pd

    try:
        meta = pd.read_csv(path, dtype=str)
    except (ValueError, OSError) as error:
        raise DatasetError(f"{path}: cannot read ({error}); fix or remove it") from None
    column = next((c for c in ("patientid", "patient_id") if c in meta.columns), None)
    if column is None or "filename" not in meta.columns:
        return {}  # JSRT's metadata (filename, nodule): each film is its own patient
    ids = meta[column].fillna("").str.strip()
    return {name: f"{root.name}-{pid}" for name, pid in zip(meta["filename"], ids) if pid}


def read_mask(path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a lung mask into a boolean ``(height, width)`` array (lung: values above 127).

    ``shape``: the ``(height, width)`` of its image; a mask of another size is refused. An empty
    or unreadable file raises :class:`ImageReadError` naming it.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ImageReadError(path, "empty mask file (0 bytes)", "re-export the mask or remove it")
    mask = read_image(path) > 127
    if shape is not None and mask.shape != tuple(shape):
        raise ImageReadError(path, f"mask is {mask.shape[1]}x{mask.shape[0]} px but its image is "
                                   f"{shape[1]}x{shape[0]} px", "a mask must be the size of its image")
    return mask


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to ``size`` (a side, or ``(height, width)``): area-weighted, then
    thresholded at one half, so thin parts neither vanish nor grow."""
    height, width = (size, size) if isinstance(size, int) else size
    if mask.shape == (height, width):
        return mask.astype(bool)
    soft = Image.fromarray(mask.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(soft) >= 0.5


def read_pair(image_path, mask_path) -> tuple[np.ndarray, np.ndarray]:
    """An X-ray (uint8) and its mask (bool) at full size; the mask checked against the image's size."""
    image = read_image(image_path)
    return image, read_mask(mask_path, image.shape)


def load_pairs(table: pd.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Images ``(n, size, size)`` uint8 and masks ``(n, size, size)`` uint8 (0 or 1) of ``table``'s
    rows, and the pairs that could not be read (image path -> message; their rows stay zero)."""
    images = np.zeros((len(table), size, size), np.uint8)
    masks = np.zeros((len(table), size, size), np.uint8)
    failed: dict[str, str] = {}
    for i, (image_path, mask_path) in enumerate(zip(table["path"], table["mask_path"])):
        try:
            image, mask = read_pair(image_path, mask_path)
        except ImageReadError as error:
            failed[image_path] = str(error)
            continue
        images[i], masks[i] = resize_square(image, size), resize_mask(mask, size)
    return images, masks, failed


def split_masks(table: pd.DataFrame, *, val_fraction: float = 0.15, test_fraction: float = 0.15,
                seed: int = 0) -> pd.Series:
    """train / validation / test per row: grouped by patient, stratified by source
    (:func:`covidxray.data.splits.split_dataset` with the source as the label)."""
    from covidxray.data.splits import split_dataset

    return split_dataset(table.assign(label=table["source"]), val_fraction=val_fraction,
                         test_fraction=test_fraction, seed=seed)
