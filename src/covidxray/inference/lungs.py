"""Lung masks for X-rays of any size: :class:`LungSegmenter` over a trained U-Net.

Each image is resized to the model's square input (as the classifiers' images are), the lung
probabilities are upsampled back to the image's own size and thresholded; the two largest regions
are kept and their holes filled. Per image it reports the lung area fraction, the bounding box
``[x0, y0, x1, y1]`` in the image's pixels (``x1``, ``y1`` exclusive, as Pillow's ``crop`` takes it)
and a quality flag (:data:`QUALITY`): ``ok``; ``no-lung`` (nothing found: a blank, tiny or
non-chest image); ``one-lung`` (one region, two of very unequal size, or two that are not side by
side: a lateral view, a cropped film, a collapsed lung or a failure); ``implausible-area`` (lungs
covering less than 8% or more than 70% of the image: no frontal chest film measured so);
``low-confidence`` (a wide band of pixels the model is unsure about: noise, drawings, negatives,
rotated films); and ``unreadable`` (the file could not be decoded). A flagged image still gets its mask and overlay;
nothing is dropped. When an image's mask is flagged, its negative is segmented too and kept if
that mask is ``ok`` (a negative: e.g. a MONOCHROME1 film exported to PNG as stored); the result
then says so.

Masks are cached on disk by the file's content and the model's identity
(``<cache>/lungs/<model digest>/<sha256>.npz``), so a second pass over a folder runs no model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from covidxray.data.images import read_file_bytes, read_image, resize_square
from covidxray.errors import CovidXrayError, ImageReadError
from covidxray.files import atomic_save
from covidxray.inference.predict import output_folder
from covidxray.presets import LUNG_SEGMENTER, SEGMENTER_SETTINGS
from covidxray.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_LUNG_PRESET = "lungs_unet_jsrt_ieee8023"
#: The settings file of a lung segmenter's folder (its kind, input size, threshold, training settings).
SEGMENTER, KIND = SEGMENTER_SETTINGS, LUNG_SEGMENTER

OK, NO_LUNG, ONE_LUNG, IMPLAUSIBLE_AREA = "ok", "no-lung", "one-lung", "implausible-area"
LOW_CONFIDENCE, UNREADABLE = "low-confidence", "unreadable"
QUALITY = (OK, NO_LUNG, ONE_LUNG, IMPLAUSIBLE_AREA, LOW_CONFIDENCE, UNREADABLE)

#: Lung area fractions seen on frontal films: 0.09-0.62 over the 674 JSRT and ieee8023 masks.
PLAUSIBLE_AREA = (0.08, 0.70)
#: A region smaller than this fraction of the image is noise, not a lung.
MIN_REGION = 0.005
#: The smaller lung covers at least this fraction of the larger (0.54 at least in the masks).
MIN_LUNG_RATIO = 0.25
#: The two lungs' centres lie at least this fraction of the width apart (0.25 at least in the masks).
MIN_SEPARATION = 0.15
#: Two lungs lie side by side: their column ranges overlap by at most this fraction of the narrower
#: one (0 in every training mask), their row ranges by at least the next of the shorter one (0.93).
MAX_COLUMN_OVERLAP, MIN_ROW_OVERLAP = 0.1, 0.5
#: Pixels with a probability between 0.1 and 0.9, as a fraction of the lung area: at most 0.35 on
#: the held-out films, 0.4-2.0 on noise, gradients, negatives and rotated films (docs/lungs.md).
MAX_UNCERTAIN = 0.4
#: Images with a side shorter than this are not segmented (flagged no-lung).
MIN_SIDE = 16
#: Bump when post-processing changes, so that cached masks are recomputed.
CACHE_VERSION = "v2"
BATCH = 32
PAD_TO = 8  # a last, smaller batch is padded to a multiple of this
CHUNK = 64  # files decoded, segmented and written at a time

REASONS = {
    NO_LUNG: "no lung found (not a chest X-ray, or blank?)",
    ONE_LUNG: "one lung region, or two not side by side (a lateral view, a cropped film, or a segmentation failure?)",
    LOW_CONFIDENCE: "the model is unsure of this mask (uncertain pixels cover {uncertain} the lung area): "
                    "not a frontal chest X-ray, or an unusual one?",
    IMPLAUSIBLE_AREA: "implausible lung area {area:.0%} of the image (not a frontal chest film, or a failure?)",
}


@dataclass
class LungMask:
    """One image's lung mask (``(height, width)`` bool, the image's own size) and what it says."""

    mask: np.ndarray
    quality: str
    reason: str = ""
    inverted: bool = False  # segmented as the negative of the image

    @property
    def lung_area_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def bbox(self) -> list[int] | None:
        """``[x0, y0, x1, y1]`` of the lungs, ends exclusive; None without lungs."""
        rows, cols = np.flatnonzero(self.mask.any(axis=1)), np.flatnonzero(self.mask.any(axis=0))
        if not len(rows):
            return None
        return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The connected regions of ``mask``: a label image (0 outside, 1.. inside), each region's
    pixel count and the column of its centre, largest region first."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return labels, np.zeros(0, np.int64), np.zeros(0)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    columns = np.bincount(labels.ravel(), weights=np.tile(np.arange(mask.shape[1]), mask.shape[0]),
                          minlength=count + 1)[1:] / sizes
    order = np.argsort(sizes, kind="stable")[::-1]
    relabel = np.zeros(count + 1, labels.dtype)
    relabel[order + 1] = np.arange(1, count + 1)
    return relabel[labels], sizes[order], columns[order]


def keep_lungs(mask: np.ndarray) -> np.ndarray:
    """The two largest regions of ``mask`` larger than :data:`MIN_REGION`, holes filled."""
    from scipy import ndimage

    labels, sizes, _ = regions(mask)
    keep = min(2, int((sizes >= MIN_REGION * mask.size).sum()))
    if keep == 0:
        return np.zeros(mask.shape, bool)
    lungs = (labels > 0) & (labels <= keep)
    background, _ = ndimage.label(~lungs)  # holes: background regions that do not touch the border
    outside = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    return lungs | ~np.isin(background, outside[outside > 0]) & (background > 0)


def lung_quality(mask: np.ndarray, area: float | None = None, probabilities: np.ndarray | None = None) -> tuple[str, str]:
    """The quality flag of a cleaned mask (:func:`keep_lungs`) and the reason, empty when ``ok``.

    ``area``: the lung area fraction to judge (default: the mask's own); ``probabilities``: the
    model's map the mask came from (same shape), to judge its confidence.
    """
    if area is None:
        area = float(mask.mean()) if mask.size else 0.0
    labels, sizes, columns = regions(mask)
    if len(sizes) == 0:
        return NO_LUNG, REASONS[NO_LUNG]
    if not PLAUSIBLE_AREA[0] <= area <= PLAUSIBLE_AREA[1]:
        return IMPLAUSIBLE_AREA, REASONS[IMPLAUSIBLE_AREA].format(area=area)
    if (len(sizes) < 2 or sizes[1] < MIN_LUNG_RATIO * sizes[0]
            or abs(columns[0] - columns[1]) < MIN_SEPARATION * mask.shape[1] or not side_by_side(labels)):
        return ONE_LUNG, REASONS[ONE_LUNG]
    if probabilities is not None:
        uncertain = float(((probabilities > 0.1) & (probabilities < 0.9)).sum()) / max(1, int(mask.sum()))
        if uncertain > MAX_UNCERTAIN:
            # counted over the whole image, so they may cover more than the lungs: '1.5 times', not '149%'
            share = f"{uncertain:.0%} of" if uncertain <= 1 else f"{uncertain:.1f} times"
            return LOW_CONFIDENCE, REASONS[LOW_CONFIDENCE].format(uncertain=share)
    return OK, ""


def side_by_side(labels: np.ndarray) -> bool:
    """Whether regions 1 and 2 of a label image sit side by side, as lungs do, not one above the other."""
    def span(values):
        return int(values.min()), int(values.max()) + 1

    (r0, r1), (c0, c1) = map(span, np.nonzero(labels == 1))
    (s0, s1), (d0, d1) = map(span, np.nonzero(labels == 2))
    columns = max(0, min(c1, d1) - max(c0, d0)) / min(c1 - c0, d1 - d0)
    rows = max(0, min(r1, s1) - max(r0, s0)) / min(r1 - r0, s1 - s0)
    return columns <= MAX_COLUMN_OVERLAP and rows >= MIN_ROW_OVERLAP


def mask_from_probabilities(probabilities: np.ndarray, shape: tuple[int, int], threshold: float = 0.5) -> LungMask:
    """The lung mask at ``shape`` from a model-size probability map, cleaned and judged.

    The regions are cleaned at the model's size (:func:`keep_lungs`: cheap whatever the image's
    size); the map is then upsampled bilinearly with dropped regions at zero and kept ones at
    least at the threshold (filled holes stay filled), and thresholded at the image's size, so
    the outline keeps the sub-pixel detail of the probabilities.
    """
    height, width = shape
    found = probabilities >= threshold
    kept = keep_lungs(found)
    clean = np.where(kept, np.maximum(probabilities, threshold), np.where(found, 0.0, probabilities))
    if clean.shape != (height, width):
        clean = np.asarray(Image.fromarray(clean.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR))
    mask = clean >= threshold
    return LungMask(mask, *lung_quality(kept, float(mask.mean()) if mask.size else 0.0, probabilities))


def unsegmentable(image: np.ndarray) -> LungMask | None:
    """A flagged empty mask for an image no model should be asked about: tiny, one grey level, or
    the same in every row or column (a 1-pixel-high image resized to a square, as the classifiers'
    inputs are, before its lungs are looked for)."""
    height, width = image.shape
    if min(height, width) < MIN_SIDE:
        reason = f"too small to segment ({width}x{height} px; at least {MIN_SIDE} px a side)"
    elif image.min() == image.max():
        reason = "blank image (a single grey level)"
    elif (image == image[:1]).all() or (image == image[:, :1]).all():  # every row (column) the same
        reason = "no detail along one side (an image 1 pixel high or wide, stretched?)"
    else:
        return None
    return LungMask(np.zeros(image.shape, bool), NO_LUNG, reason)


class LungSegmenter:
    """A trained lung U-Net with its settings: masks for arrays (:meth:`segment`) and files
    (:meth:`segment_files`)."""

    def __init__(self, model, settings: dict, path: str | Path | None = None, identity: str | None = None):
        self.model, self.settings = model, settings
        self.path = Path(path) if path is not None else None
        self.image_size = int(settings["image_size"])
        self.threshold = float(settings.get("threshold", 0.5))
        self.identity = identity  # digest of the model file: the cache key's model half (None: no cache)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Lung probabilities ``(n, size, size)`` for ``(n, size, size)`` uint8 images at the model's size."""
        if len(images) == 0:
            return np.zeros((0, self.image_size, self.image_size), np.float32)
        parts = []
        for start in range(0, len(images), BATCH):  # predict_on_batch: no per-call input pipeline
            batch = np.asarray(images[start:start + BATCH], np.float32)[..., None]
            count = len(batch)
            if count % PAD_TO:  # a few batch shapes only: each new one compiles (JAX) or traces (TensorFlow)
                batch = np.concatenate([batch, np.zeros((PAD_TO - count % PAD_TO, *batch.shape[1:]), np.float32)])
            parts.append(np.asarray(self.model.predict_on_batch(batch))[:count, ..., 0])
        return np.concatenate(parts)

    def segment(self, images: list[np.ndarray]) -> list[LungMask]:
        """Masks for 2-D uint8 images of any sizes, each at its own size."""
        for image in images:
            if np.ndim(image) != 2:
                raise ValueError(f"segment takes 2-D grayscale images; got shape {np.shape(image)}")
        results: list[LungMask | None] = [unsegmentable(image) for image in images]
        todo = [i for i, r in enumerate(results) if r is None]
        small = np.stack([resize_square(images[i], self.image_size) for i in todo]) if todo else np.zeros((0,))
        for i, probabilities in zip(todo, self.probabilities(small)):
            results[i] = mask_from_probabilities(probabilities, images[i].shape, self.threshold)
        flagged = [k for k, i in enumerate(todo) if results[i].quality != OK]
        if flagged:  # a negative image: try it the right way round, keep it only if that looks right
            inverted = self.probabilities(255 - small[flagged])
            for k, probabilities in zip(flagged, inverted):
                i = todo[k]
                second = mask_from_probabilities(probabilities, images[i].shape, self.threshold)
                if second.quality == OK:
                    second.inverted = True
                    results[i] = second
        return results

    def segment_cached(self, images, digests, *, cache_dir: str | Path | None = None, use_cache: bool = True) -> list[LungMask]:
        """:meth:`segment` for decoded images ``(n, side, side[, 1])`` with their pixel digests: masks
        are cached by digest and side (None: not cached), so a dataset is segmented once."""
        images = np.asarray(images)
        if images.ndim == 4:
            images = images[..., 0]
        cache = MaskCache(cache_dir, self.identity) if use_cache and self.identity else None
        keys = [None if cache is None or not d else f"{d}-{images.shape[1]}x{images.shape[2]}" for d in digests]
        results = [None if key is None else cache.get(key, images.shape[1:]) for key in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        bar = progress_bar(total=len(todo), desc="segmenting lungs", unit="img", disable=not todo)
        for start in range(0, len(todo), CHUNK):
            rows = todo[start:start + CHUNK]
            for i, lungs in zip(rows, self.segment([images[i] for i in rows])):
                results[i] = lungs
                if keys[i] is not None:
                    cache.put(keys[i], lungs)
            bar.update(len(rows))
        bar.close()
        return results

    def segment_files(self, paths, out: str | Path | None = None, *, cache_dir: str | Path | None = None,
                      use_cache: bool = True) -> list[dict]:
        """Segment image files; with ``out``, write each one's mask and overlay PNG there.

        Returns one result per path, in order: ``path``, ``lung_area_fraction``, ``bbox``,
        ``quality``, ``warning`` (None, or what a user should know, naming the file), ``mask`` and
        ``overlay`` (the files written, None without ``out``). A file that cannot be read gets
        quality ``unreadable``; no file stops the others.
        """
        paths = [Path(p) for p in paths]
        folder = output_folder(out, "--out") if out is not None else None
        names = output_names(paths) if folder is not None else [None] * len(paths)
        cache = MaskCache(cache_dir, self.identity) if use_cache and self.identity else None
        chunks = [range(start, min(start + CHUNK, len(paths))) for start in range(0, len(paths), CHUNK)]
        results: list[dict] = []
        bar = progress_bar(total=len(paths), desc="segmenting lungs", unit="img")
        # A pipeline: the next chunk decodes and the last one is written while the model runs on this one.
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            loading = [pool.submit(_load, paths[i], cache) for i in chunks[0]] if chunks else []
            writing: list = []
            for n, chunk in enumerate(chunks):
                loaded = [future.result() for future in loading]
                if n + 1 < len(chunks):
                    loading = [pool.submit(_load, paths[i], cache) for i in chunks[n + 1]]
                fresh = [k for k, (image, _, cached) in enumerate(loaded) if image is not None and cached is None]
                for k, lungs in zip(fresh, self.segment([loaded[k][0] for k in fresh]) if fresh else []):
                    image, sha, _ = loaded[k]
                    loaded[k] = (image, sha, lungs)
                    if cache is not None and sha is not None:
                        pool.submit(cache.put, sha, lungs)
                results += [future.result() for future in writing]  # at most two chunks of images in memory
                bar.update(len(writing))
                writing = [pool.submit(_result, paths[i], *entry, folder, names[i]) for i, entry in zip(chunk, loaded)]
            results += [future.result() for future in writing]
            bar.update(len(writing))
        bar.close()
        return results


def _load(path: Path, cache: MaskCache | None):
    """``(image, sha256, cached LungMask or None)``; ``(None, None, error message)`` if unreadable."""
    try:
        data = read_file_bytes(path)  # a FIFO or a link to a device is refused unread, as predict does
    except ImageReadError as error:
        return None, None, str(error)
    except OSError as error:
        return None, None, f"{path}: cannot read ({error.strerror or error}); check the path and permissions"
    sha = hashlib.sha256(data).hexdigest()
    try:
        image = read_image(path, data)
    except ImageReadError as error:
        return None, None, str(error)
    return image, sha, cache.get(sha, image.shape) if cache is not None else None


def _result(path: Path, image, sha, lungs, folder: Path | None, names) -> dict:
    if image is None:  # lungs holds the error message
        return {"path": str(path), "lung_area_fraction": None, "bbox": None, "quality": UNREADABLE,
                "warning": lungs, "mask": None, "overlay": None}
    warning = None
    if lungs.quality != OK:
        warning = f"{path}: {lungs.quality}: {lungs.reason}"
    elif lungs.inverted:
        warning = f"{path}: looked inverted (a negative, or MONOCHROME1 saved as is); segmented its negative"
    mask_path = overlay_path = None
    if folder is not None:
        mask_path, overlay_path = folder / names[0], folder / names[1]
        write_mask(mask_path, lungs.mask)
        write_overlay(overlay_path, image, lungs)
    return {"path": str(path), "lung_area_fraction": round(lungs.lung_area_fraction, 4), "bbox": lungs.bbox,
            "quality": lungs.quality, "warning": warning,
            "mask": None if mask_path is None else str(mask_path),
            "overlay": None if overlay_path is None else str(overlay_path)}


def output_names(paths) -> list[tuple[str, str]]:
    """Mask and overlay names per input (``a.png`` -> ``a_lungs.png``, ``a_overlay.png``); repeats get ``_2``, ``_3``."""
    names, taken = [], set()
    for path in paths:
        stem, number = Path(path).stem, 1
        base = stem
        while base.lower() in taken:  # lower: a case-insensitive file system sees A.png as a.png
            number += 1
            base = f"{stem}_{number}"
        taken.add(base.lower())
        names.append((f"{base}_lungs.png", f"{base}_overlay.png"))
    return names


def write_mask(path: Path, mask: np.ndarray) -> None:
    """The mask as an 8-bit PNG, 255 in the lungs, 0 elsewhere (the layout of the training masks)."""
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    atomic_save(path, lambda tmp: image.save(tmp, format="PNG", compress_level=1))


def overlay(image: np.ndarray, lungs: LungMask) -> Image.Image:
    """The X-ray in grey, the lungs tinted green with their outline, the box in yellow, a flag in red."""
    from scipy import ndimage

    mask = lungs.mask
    rgb = np.repeat(image[..., None], 3, axis=2)
    tinted = rgb[mask].astype(np.uint16) * 13 // 20
    tinted[:, 1] += 89  # 0.65 grey + 0.35 green
    rgb[mask] = tinted
    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(image.shape) // 256))
    rgb[edge] = (0, 255, 0)
    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture)
    if lungs.bbox is not None:
        x0, y0, x1, y1 = lungs.bbox
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 220, 0))
    if lungs.quality != OK:
        draw.text((4, 4), lungs.quality, fill=(255, 40, 40))
    return picture


def write_overlay(path: Path, image: np.ndarray, lungs: LungMask) -> None:
    picture = overlay(image, lungs)
    atomic_save(path, lambda tmp: picture.save(tmp, format="PNG", compress_level=1))


class MaskCache:
    """Cleaned masks on disk, keyed by the file's sha256 and the model's identity."""

    def __init__(self, root: str | Path | None, identity: str):
        from covidxray.data.cache import default_cache_dir

        self.folder = Path(root) if root is not None else default_cache_dir()
        self.folder = self.folder / "lungs" / f"{identity}-{CACHE_VERSION}"

    def get(self, sha: str, shape: tuple[int, int]) -> LungMask | None:
        try:
            with np.load(self.folder / f"{sha}.npz") as entry:
                mask = np.unpackbits(entry["mask"], count=shape[0] * shape[1]).reshape(shape).astype(bool)
                return LungMask(mask, str(entry["quality"]), str(entry["reason"]), bool(entry["inverted"]))
        except (OSError, ValueError, KeyError):  # missing, or a stale or broken entry: computed again
            return None

    def put(self, sha: str, lungs: LungMask) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, mask=np.packbits(lungs.mask), quality=lungs.quality, reason=lungs.reason,
                            inverted=lungs.inverted)
        try:
            atomic_save(self.folder / f"{sha}.npz", lambda tmp: tmp.write_bytes(buffer.getvalue()))
        except OSError as error:  # a read-only or full cache costs speed, not results
            log.warning("cannot write the lung-mask cache in %s (%s)", self.folder, error.strerror or error)


def model_identity(path: Path, settings: dict) -> str:
    """A digest of the model file and the settings that change its masks."""
    digest = hashlib.sha256(path.read_bytes())
    digest.update(json.dumps({"threshold": settings.get("threshold", 0.5)}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def segmenter_folder(run: str | Path | None = None) -> Path:
    """The folder of a lung segmenter: ``run`` itself, ``preset:NAME``, or the default preset."""
    from covidxray.presets import PREFIX, preset_dir

    if run is None:
        return preset_dir(DEFAULT_LUNG_PRESET)
    if str(run).startswith(PREFIX):
        return preset_dir(str(run)[len(PREFIX):])
    return Path(run)


def read_settings(folder: Path) -> dict:
    path = folder / SEGMENTER
    if not path.is_file():
        raise CovidXrayError(f"{folder}: not a lung segmenter (no {SEGMENTER}); train one with covidxray lungs train, "
                             f"or use preset:{DEFAULT_LUNG_PRESET}")
    try:
        settings = json.loads(path.read_text())
        if settings.get("kind") != KIND or int(settings["image_size"]) < 1:
            raise ValueError(f"kind {settings.get('kind')!r}, expected {KIND!r}")
    except (ValueError, KeyError, TypeError) as error:
        raise CovidXrayError(f"{path}: not a lung segmenter's settings ({error}); retrain it") from None
    return settings


def load_segmenter(run: str | Path | None = None) -> LungSegmenter:
    """The lung segmenter in folder ``run`` (written by ``covidxray lungs train``), ``preset:NAME``,
    or the shipped preset (:data:`DEFAULT_LUNG_PRESET`) when None."""
    import covidxray.models.unet  # noqa: F401  (registers the layers the archive names)
    from covidxray import rundir
    from covidxray.models import load_model

    folder = segmenter_folder(run)
    if not folder.is_dir():
        raise CovidXrayError(f"{folder}: no such folder; give a folder written by covidxray lungs train")
    settings = read_settings(folder)
    if (folder / rundir.BACKUP).is_dir() and not (folder / rundir.METRICS).is_file():
        raise CovidXrayError(f"{folder}: a lung segmenter's run that was interrupted (its model.keras is a checkpoint "
                             f"of training); finish it with covidxray lungs train --resume {folder}")
    model_path = folder / rundir.MODEL
    model = load_model(model_path)
    return LungSegmenter(model, settings, folder, identity=model_identity(model_path, settings))
