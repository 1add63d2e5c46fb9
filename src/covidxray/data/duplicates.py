"""Near-duplicate X-rays: one film resized, re-encoded, re-cropped or annotated in another file.

Their pixels differ, so a digest does not find them; three signals per image do, each computed
from the image decoded at :data:`FINGERPRINT_SIDE` px (square, from the decoded-image cache):

- ``phash``: the Hamming distance of 64-bit perceptual hashes (imagehash's DCT hash);
- ``layout``: the correlation of 64-px histogram-equalised thumbnails (where the dark and
  bright parts are);
- ``detail``: the correlation of the equalised image minus its Gaussian blur (ribs, vessels,
  wires and markers: what two different films do not share, however alike they look).

Normal chest films look alike: layout correlation alone pairs different patients (the shared
data's README found ten such pairs at 0.96), and so does a perceptual hash alone. The rule of
:class:`NearDuplicateRule` asks for the detail to match; measured on ``../shared/data`` in
``docs/data.md`` (recall against the README's hand-checked list, and pairs inspected by eye).

Pairs are found in blocks: cheap candidates first (layout or phash), detail only for those;
about 3 s for the 4,555 images of the three shared datasets on 2 CPU cores, once decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter, ImageOps

from covidxray.data.sources import original_name_key

#: Side at which fingerprints are taken (the decoded-image cache holds it once computed).
FINGERPRINT_SIDE = 128
LAYOUT_SIDE = 64
DETAIL_BLUR = 3.0
PAIR_COLUMNS = ("a", "b", "phash", "layout", "detail")


@dataclass(frozen=True)
class NearDuplicateRule:
    """When two images are the same film: ``detail >= strong_detail``, or ``detail >= weak_detail``
    with ``layout >= layout`` and ``phash <= phash`` (candidates: ``layout >= candidate_layout`` or
    ``phash <= phash``).

    Measured on the three shared datasets (``docs/data.md``): true pairs that were cropped,
    annotated ("day 1", arrows) or re-exposed score detail 0.35-0.7 with layout >= 0.93 and
    phash <= 6; different normal films that look alike score detail up to 0.63 but phash 8-20, or
    layout below 0.93.
    """

    strong_detail: float = 0.75
    weak_detail: float = 0.35
    layout: float = 0.93
    phash: int = 6
    candidate_layout: float = 0.90


@dataclass
class Fingerprints:
    """Per image: a 64-bit perceptual hash, a standardised layout and detail vector."""

    hashes: np.ndarray  # (n,) uint64
    layout: np.ndarray  # (n, LAYOUT_SIDE**2) float32, zero mean and unit variance per row
    detail: np.ndarray  # (n, FINGERPRINT_SIDE**2) float32, the same

    def __len__(self) -> int:
        return len(self.hashes)

    def subset(self, rows) -> Fingerprints:
        return Fingerprints(self.hashes[rows], self.layout[rows], self.detail[rows])


def fingerprint(image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The hash, layout and detail of one uint8 grayscale image (any size; resized square)."""
    import imagehash

    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if picture.size != (FINGERPRINT_SIDE, FINGERPRINT_SIDE):
        picture = picture.resize((FINGERPRINT_SIDE, FINGERPRINT_SIDE), Image.Resampling.BILINEAR)
    bits = imagehash.phash(picture).hash.ravel()
    equalised = ImageOps.equalize(picture)
    layout = np.asarray(equalised.resize((LAYOUT_SIDE, LAYOUT_SIDE), Image.Resampling.BILINEAR), np.float32)
    sharp = np.asarray(equalised, np.float32)
    detail = sharp - np.asarray(equalised.filter(ImageFilter.GaussianBlur(DETAIL_BLUR)), np.float32)
    return int(np.packbits(bits).view(">u8")[0]), _standardised(layout), _standardised(detail)


def fingerprint_images(images: np.ndarray) -> Fingerprints:
    """Fingerprints of ``(n, h, w)`` (or ``(n, h, w, 1)``) uint8 images."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    side = FINGERPRINT_SIDE
    hashes, layout = np.zeros(len(images), np.uint64), np.zeros((len(images), LAYOUT_SIDE ** 2), np.float32)
    detail = np.zeros((len(images), side * side), np.float32)
    for i, image in enumerate(images):
        hashes[i], layout[i], detail[i] = fingerprint(image)
    return Fingerprints(hashes, layout, detail)


def fingerprint_files(paths: list[str], cache_dir=None):
    """Fingerprints of image files, decoded through the image cache; returns ``(fingerprints, ok,
    failed)``: ``ok`` marks the files that decoded, ``failed`` maps the others to why."""
    from covidxray.data.cache import ImageCache

    decoded = ImageCache(cache_dir).load(list(paths), FINGERPRINT_SIDE)
    return fingerprint_images(decoded.images), decoded.ok, decoded.failed


def near_duplicate_pairs(prints: Fingerprints, *, groups: np.ndarray | None = None, across_only: bool = False,
                         rule: NearDuplicateRule = NearDuplicateRule(), block: int = 512) -> pd.DataFrame:
    """The pairs ``a < b`` of near-duplicate images, with their three scores (:data:`PAIR_COLUMNS`).

    ``groups`` with ``across_only``: only pairs whose two images are in different groups (for
    instance datasets).
    """
    n = len(prints)
    found = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        layout = prints.layout[start:stop] @ prints.layout.T / prints.layout.shape[1]
        phash = np.bitwise_count(prints.hashes[start:stop, None] ^ prints.hashes[None, :]).astype(np.int64)
        candidate = (layout >= rule.candidate_layout) | (phash <= rule.phash)
        rows = np.arange(start, stop)[:, None]
        candidate &= np.arange(n)[None, :] > rows  # each pair once
        if across_only and groups is not None:
            candidate &= groups[start:stop, None] != groups[None, :]
        ia, ib = np.nonzero(candidate)
        if not len(ia):
            continue
        a, b = ia + start, ib
        detail = np.einsum("ij,ij->i", prints.detail[a], prints.detail[b]) / prints.detail.shape[1]
        lay, ph = layout[ia, ib], phash[ia, ib]
        keep = (detail >= rule.strong_detail) | (
            (detail >= rule.weak_detail) & (lay >= rule.layout) & (ph <= rule.phash))
        found.append(pd.DataFrame({"a": a[keep], "b": b[keep], "phash": ph[keep], "layout": lay[keep],
                                   "detail": detail[keep]}))
    if not found:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("layout", "detail") else int) for c in PAIR_COLUMNS})
    return pd.concat(found, ignore_index=True).astype({"a": int, "b": int, "phash": int})


def near_duplicates_of(queries: Fingerprints, references: Fingerprints,
                       rule: NearDuplicateRule = NearDuplicateRule()) -> np.ndarray:
    """True for each query image that is a near-duplicate of any reference image."""
    both = Fingerprints(np.concatenate([queries.hashes, references.hashes]),
                        np.concatenate([queries.layout, references.layout]),
                        np.concatenate([queries.detail, references.detail]))
    side = np.r_[np.zeros(len(queries), int), np.ones(len(references), int)]
    pairs = near_duplicate_pairs(both, groups=side, across_only=True, rule=rule)
    hit = np.zeros(len(queries), dtype=bool)
    hit[pairs["a"].to_numpy()] = True  # a < b: a is the query
    return hit


def same_images(table: pd.DataFrame, reference: pd.DataFrame, cache_dir=None, *,
                near: bool = True) -> tuple[np.ndarray, dict]:
    """The one rule for "is this the same image?": True for each row of ``table`` whose image is also
    in ``reference`` (``evaluate`` leaves out what a run trained on, ``data subset --exclude`` what
    another dataset holds): the same original file name, identical pixels, or a near-duplicate.

    Both are tables with ``path`` and ``original_name``; a ``pixels`` column (pixel digests, as
    ``split.csv`` and loaded datasets hold) is used where a table has one, else the digests are read
    through the image cache. Reference files that are not on this machine match by name and pixels
    only; files that do not decode, by name (and given pixels) only. ``near=False``: exact copies
    only (names and given pixels; nothing decoded). Returns the flags and
    ``{"missing": reference files not on this machine, "near": rows found as near-duplicates}``.
    """
    from covidxray.data.cache import ImageCache

    names = {k for k in map(original_name_key, reference.get("original_name", [])) if k}
    seen = np.array([bool(k) and k in names for k in map(original_name_key, table["original_name"])], dtype=bool)
    present = [str(p) for p in reference.get("path", []) if near and Path(p).is_file()]
    found = {"missing": len(reference) - len(present) if near else 0, "near": 0}
    digests = set(reference["pixels"]) if "pixels" in reference else set()
    cache = ImageCache(cache_dir)
    theirs = cache.load(present, FINGERPRINT_SIDE) if present else None
    if theirs is not None:
        digests |= set(theirs.pixel_digests)
    digests -= {"", None}
    if "pixels" in table:
        seen |= table["pixels"].isin(digests).to_numpy()
    rest = np.flatnonzero(~seen)
    if theirs is None or not len(rest):
        return seen, found
    ours = cache.load([str(p) for p in table["path"].to_numpy()[rest]], FINGERPRINT_SIDE)
    if "pixels" not in table:
        seen[rest] |= np.array([d is not None and d in digests for d in ours.pixel_digests], dtype=bool)
    near = near_duplicates_of(fingerprint_images(ours.images), fingerprint_images(theirs.images).subset(
        np.flatnonzero(theirs.ok))) & ours.ok & ~seen[rest]
    found["near"] = int(near.sum())
    seen[rest[near]] = True
    return seen, found


def duplicate_groups(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """A group number per image: images joined by pairs (directly or through others) share one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs["a"].to_numpy(), pairs["b"].to_numpy())), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _standardised(values: np.ndarray) -> np.ndarray:
    flat = values.ravel().astype(np.float32)
    return (flat - flat.mean()) / (flat.std() + 1e-6)
