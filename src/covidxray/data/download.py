"""Download, verify and lay out public chest X-ray datasets.

``download_dataset("darkcovidnet", "data")`` fetches the archive into ``data/.downloads/``
(resuming a broken download), checks it, and extracts it to::

    data/darkcovidnet/
        covid/  normal/  pneumonia/
        manifest.csv          # path,label,patient_id,source

The dataset folder appears in one rename at the end, so a crash never leaves half of it.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from covidxray.data.images import is_image_path
from covidxray.errors import DatasetError
from covidxray.labels import canonical_label
from covidxray.progress import progress_bar

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "patient_id", "source")

_CHUNK_SIZE = 1 << 20
_USER_AGENT = "covidxray-downloader"
# NIH ChestX-ray8 file names: 8-digit patient id, underscore, 3-digit follow-up number.
_NIH_NAME = re.compile(r"(\d{8})_(\d{3})\.png", re.IGNORECASE)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a public dataset lives and what a correct copy of it holds.

    Parameters
    ----------
    name : str
        Folder name under ``dest`` and key in :data:`DATASETS`.
    url : str
        Zip archive to download.
    classes : Mapping[str, str]
        Class folder name in the archive -> canonical class (``covid``, ``normal``, ...).
    expected_counts : Mapping[str, int]
        Class folder name in the archive -> number of images upstream.
    sha256 : str or None
        Checksum of the archive, or None when the archive is not byte-stable.
    citation, licence : str
        What users of the data must cite, and the terms the data come under.
    """

    name: str
    url: str
    classes: Mapping[str, str]
    expected_counts: Mapping[str, int]
    sha256: str | None = None
    citation: str = ""
    licence: str = ""

    def __post_init__(self) -> None:
        if set(self.classes) != set(self.expected_counts):
            raise ValueError(f"{self.name}: classes and expected_counts name different folders")


_DARKCOVIDNET_COUNTS = {"Covid-19": 125, "No_findings": 500, "Pneumonia": 500}

#: Datasets ``covidxray data download`` knows, by name.
DATASETS: dict[str, DatasetSpec] = {
    "darkcovidnet": DatasetSpec(
        name="darkcovidnet",
        # GitHub builds this archive on request: its bytes (and so its sha256) change over time.
        url="https://github.com/muhammedtalo/COVID-19/archive/refs/heads/master.zip",
        classes={folder: canonical_label(folder) for folder in _DARKCOVIDNET_COUNTS},
        expected_counts=_DARKCOVIDNET_COUNTS,
        sha256=None,
        citation=(
            "Ozturk T, Talo M, Yildirim EA, Baloglu UB, Yildirim O, Acharya UR. Automated "
            "detection of COVID-19 cases using deep neural networks with X-ray images. Computers "
            "in Biology and Medicine 121:103792 (2020). "
            "https://doi.org/10.1016/j.compbiomed.2020.103792"
        ),
        licence=(
            "No licence file upstream (github.com/muhammedtalo/COVID-19). COVID-19 images come "
            "from ieee8023/covid-chestxray-dataset (per-image licences in its metadata.csv); "
            "normal and pneumonia images from NIH ChestX-ray8 (Wang et al., CVPR 2017; cite it). "
            "For research and teaching only."
        ),
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` called ``name``; a :class:`DatasetError` naming the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}"
        ) from None


def download_dataset(
    name: str,
    dest: str | Path,
    *,
    url: str | None = None,
    min_fraction: float = 0.98,
    spec: DatasetSpec | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download, verify and extract dataset ``name`` under ``dest``; return its folder.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    dest : str or Path
        Parent folder; the dataset lands in ``dest/<name>/`` and the archive in
        ``dest/.downloads/``.
    url : str, optional
        Download from here instead of the spec's URL (a mirror).
    min_fraction : float
        Each class must hold at least this fraction of its expected image count.
    spec : DatasetSpec, optional
        Use this spec instead of looking ``name`` up in :data:`DATASETS`.
    timeout : float
        Seconds to wait for the server before giving up (the download can be resumed).
    """
    spec = spec if spec is not None else dataset_spec(name)
    if urllib.parse.urlsplit(url or spec.url).scheme not in ("http", "https", "file"):
        raise DatasetError(f"cannot download {url or spec.url!r}: give a full http(s):// address")
    dest = Path(dest)
    target = dest / spec.name
    if _is_complete(target):
        return target
    archive = fetch(url or spec.url, dest / ".downloads" / f"{spec.name}.zip", timeout=timeout)
    root = verify_archive(archive, spec, min_fraction=min_fraction)
    _lay_out(archive, root, spec, target)
    return target


# --------------------------------------------------------------------------------------- download


def fetch(url: str, archive: Path, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``archive`` through ``archive.part``, resuming a partial file."""
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part is no prefix of the file: start over
            part.unlink()
            return fetch(url, archive, timeout=timeout)
        raise DatasetError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:
        raise _network_error(url, part, error) from None
    except ValueError as error:  # not a URL urllib can open, e.g. no http:// in front
        raise DatasetError(f"cannot download {url!r} ({error}); give a full http(s):// address") from None
    with response:
        offset = _resume_offset(response, offset, url, part)
        total = _total_size(response, offset)
        try:
            _copy(response, part, offset, total, label=archive.name)
        except (OSError, http.client.HTTPException) as error:
            raise _network_error(url, part, error) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise _network_error(url, part, f"connection closed after {size} of {total} bytes")
    part.replace(archive)
    return archive


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _resume_offset(response, offset: int, url: str, part: Path) -> int:
    """Where the response body starts in the file: ``offset`` on 206, 0 when Range was ignored."""
    if response.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != offset:
        raise DatasetError(
            f"{url} answered a request to resume at byte {offset} with "
            f"{response.headers.get('Content-Range')!r}; delete {part} and re-run"
        )
    return offset


def _total_size(response, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _copy(
    response, part: Path, offset: int, total: int | None, *, label: str
) -> None:
    bar = progress_bar(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=label)
    with bar, open(part, "ab" if offset else "wb") as out:
        while chunk := response.read(_CHUNK_SIZE):
            out.write(chunk)
            bar.update(len(chunk))


def _network_error(url: str, part: Path, reason: object) -> DatasetError:
    kept = f"the partial file {part} is kept; " if part.is_file() else ""
    return DatasetError(f"download of {url} failed ({reason}); {kept}re-run the command to resume")


# ------------------------------------------------------------------------------------------ verify


def verify_archive(
    archive: Path, spec: DatasetSpec, *, min_fraction: float = 0.98
) -> PurePosixPath:
    """Check ``archive`` against ``spec``; return the folder in it that holds the class folders."""
    fix = f"delete {archive} and re-run the command to download it again"
    if spec.sha256 is not None and _sha256(archive) != spec.sha256.lower():
        raise DatasetError(f"{archive}: sha256 differs from the published one; {fix}")
    try:
        with zipfile.ZipFile(archive) as zf:
            bad_member = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise DatasetError(f"{archive}: not a readable zip archive ({error}); {fix}") from None
    if bad_member is not None:
        raise DatasetError(f"{archive}: member {bad_member!r} is corrupt (CRC error); {fix}")
    root, counts = _find_root(_class_images(names), spec, archive)
    _check_counts(counts, spec, min_fraction, archive)
    return root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_parts(member: str) -> tuple[str, ...] | None:
    """The parts of a zip member name, or None for names that could escape the target."""
    if "\\" in member or member.startswith("/") or ":" in member:
        return None
    parts = PurePosixPath(member).parts
    if any(part in ("..", ".", "") for part in parts):
        return None
    return parts


def _class_images(names: list[str]) -> dict[tuple[PurePosixPath, str], list[str]]:
    """Image members grouped by (parent folder, class folder) that directly holds them."""
    groups: dict[tuple[PurePosixPath, str], list[str]] = {}
    for member in names:
        parts = _safe_parts(member)
        if parts is None or len(parts) < 2 or member.endswith("/"):
            continue
        if not is_image_path(PurePosixPath(parts[-1])) or parts[-1].startswith("."):
            continue
        groups.setdefault((PurePosixPath(*parts[:-2]), parts[-2]), []).append(member)
    return groups


def _find_root(groups, spec: DatasetSpec, archive: Path) -> tuple[PurePosixPath, dict[str, int]]:
    """The folder holding every class folder of ``spec`` (the fullest when several do)."""
    found: dict[PurePosixPath, dict[str, int]] = {}
    for (parent, folder), members in groups.items():
        if folder in spec.classes:
            found.setdefault(parent, {})[folder] = len(members)
    complete = {root: counts for root, counts in found.items() if len(counts) == len(spec.classes)}
    if complete:
        root = max(complete, key=lambda r: (sum(complete[r].values()), -len(str(r))))
        return root, complete[root]
    best = max(found.values(), key=len, default={})
    missing = [folder for folder in spec.classes if folder not in best]
    raise DatasetError(
        f"{archive}: no folder with image folders {', '.join(spec.classes)}; missing "
        f"{', '.join(missing)}. The upstream layout may have changed: delete {archive} and re-run, "
        "or lay the dataset out by hand"
    )


def _check_counts(
    counts: dict[str, int], spec: DatasetSpec, min_fraction: float, archive: Path
) -> None:
    short = [
        f"{folder}: {counts[folder]} of {expected}"
        for folder, expected in spec.expected_counts.items()
        if counts[folder] < min_fraction * expected
    ]
    if short:
        raise DatasetError(
            f"{archive}: too few images ({'; '.join(short)}; need {min_fraction:.0%} of each); "
            f"delete {archive} and re-run, or lower min_fraction to accept a smaller copy"
        )


# ---------------------------------------------------------------------------------------- lay out


def _is_complete(target: Path) -> bool:
    """True when ``target`` holds a finished lay-out; raise when it holds something else."""
    if not target.exists():
        return False
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
        return False
    manifest = target / MANIFEST_NAME
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as file:
            paths = [row["path"] for row in csv.DictReader(file)]
        missing = [path for path in paths if not (target / path).is_file()]
        if not missing:
            return True
        reason = f"{len(missing)} files of its manifest are missing (e.g. {missing[0]})"
    else:
        reason = f"it has no {MANIFEST_NAME}"
    raise DatasetError(
        f"{target} exists but is not a complete download ({reason}); delete it and re-run"
    )


def _lay_out(archive: Path, root: PurePosixPath, spec: DatasetSpec, target: Path) -> None:
    """Extract the class folders under ``root`` into ``target`` and write its manifest."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        rows = _extract(archive, root, spec, staging)
        write_manifest(staging / MANIFEST_NAME, rows)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _extract(
    archive: Path, root: PurePosixPath, spec: DatasetSpec, staging: Path
) -> list[dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    with zipfile.ZipFile(archive) as zf:
        groups = _class_images(zf.namelist())
        for folder, label in spec.classes.items():
            (staging / label).mkdir()
            for member in groups.get((root, folder), []):
                filename = PurePosixPath(member).name
                out = staging / label / filename
                if not out.resolve().is_relative_to(staging.resolve()):
                    continue  # _safe_parts already refuses such names; never write outside
                with zf.open(member) as source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK_SIZE)
                rows[f"{label}/{filename}"] = {"path": f"{label}/{filename}", "label": label,
                                               **patient_and_source(filename)}
    return [rows[path] for path in sorted(rows)]


def patient_and_source(filename: str) -> dict[str, str]:
    """Patient id and source of a DarkCovidNet file: NIH names carry the patient, others don't."""
    match = _NIH_NAME.fullmatch(filename)
    if match:
        return {"patient_id": f"nih-{int(match.group(1))}", "source": "nih-chestxray8"}
    return {"patient_id": "", "source": "ieee8023"}


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """Write ``rows`` as a CSV with the columns :data:`MANIFEST_COLUMNS`."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
