"""Find the labelled images of a dataset and return them as one table.

Each way a dataset can lie on disk is one :class:`Layout` in :data:`LAYOUTS`, tried in order by
:func:`load_dataset`; a layout owns how it is recognised, read, labelled and grouped by patient and
source (the pattern of torchxrayvision's ``datasets.py``):

* :class:`Manifest`: a CSV with ``path,label`` and optional ``patient_id``, ``source`` columns (a
  folder holding ``manifest.csv`` is read through it);
* :class:`IEEE8023`: the covid-chestxray-dataset layout, ``metadata.csv`` + ``images/`` (labels
  from ``finding``, frontal views only);
* :class:`JSRT`: the JSRT films, ``metadata.csv`` with ``filename,nodule`` + ``images/``: films
  without a nodule are ``normal``; nodule films are neither normal nor a pneumonia and are left out;
* :class:`ClassFolders`: ``ROOT/<class>/<image>``, whatever the folder names the alias table knows.

A path that is not text (a NUL byte; a file name that is not UTF-8, as archives made on
Windows hold) is refused, naming the file and the fix; a manifest row that repeats an image is
counted once, with a warning; a manifest or metadata file that points outside its own folder
(``../../etc/passwd``) is read, with a warning.

Every layout gives the same columns: ``path`` (absolute), ``label`` (canonical class),
``patient_id`` (empty string when unknown), ``source``, ``original_label``, ``original_name``
(the file name of the original image, to find the same image in two datasets) and ``dataset``.

:func:`load_datasets` reads several datasets into one table and counts an image that two of
them share once (same original file name; identical pixels are dropped after decoding).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray.data.images import is_image_path
from covidxray.errors import DatasetError, printable
from covidxray.labels import ALIASES, NORMAL, canonical_label

log = logging.getLogger(__name__)

COLUMNS = ["path", "label", "patient_id", "source", "original_label", "original_name", "dataset"]
MANIFEST_NAME = "manifest.csv"
IEEE8023_METADATA = "metadata.csv"
#: Views of the ieee8023 collection that are frontal chest X-rays.
FRONTAL_VIEWS = frozenset({"PA", "AP", "AP SUPINE", "AP SEMI ERECT", "AP ERECT"})


def load_dataset(path: str | Path) -> pd.DataFrame:
    """Read the labelled images at ``path`` (a manifest CSV or a folder) into a table."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder; check the --data path")
    if path.is_file() and path.suffix.lower() != ".csv":
        raise DatasetError(f"{path}: a dataset is a folder or a .csv manifest with path,label columns")
    layout = next(layout for layout in LAYOUTS if layout.matches(path))
    frame = layout.read(path)
    if frame.empty:
        raise DatasetError(f"{path}: no labelled images found")
    _refuse_names_not_utf8(frame["path"], path)
    frame["dataset"] = str(path)
    return frame[COLUMNS].reset_index(drop=True)


def dataset_root(path: str | Path) -> Path:
    """The folder a dataset's images are under: the folder given, or a manifest's own folder."""
    path = Path(path)
    return path.parent if path.suffix.lower() == ".csv" else path


def as_paths(data: str | Path | list | tuple) -> list[str]:
    """One dataset path or several, as a list of strings."""
    return [str(d) for d in data] if isinstance(data, list | tuple) else [str(data)]


def load_datasets(data: str | Path | list | tuple) -> pd.DataFrame:
    """Read one or several datasets into one table; an original image already read is not read again.

    Two rows are the same image when their original file names match (case and extension
    ignored; only names a manifest's ``original_name`` column or ieee8023's metadata gives, since
    generic file names recur across datasets); the first dataset named keeps it. Identical
    pixels are found after decoding (:mod:`covidxray.data.loading`). Patients stay apart by source, since the split
    groups by (source, patient_id).
    """
    paths = as_paths(data)
    if len(set(paths)) < len(paths):
        raise DatasetError(f"{', '.join(paths)}: a dataset is named twice; name each --data once")
    frames, seen = [], set()
    for path in paths:
        frame = load_dataset(path)
        keys = frame["original_name"].map(original_name_key)
        repeated = keys.isin(seen) & (keys != "")
        if repeated.any():
            log.info("%s: %d images are also in an earlier dataset (same original file name); counted once",
                     path, int(repeated.sum()))
        seen |= set(keys[keys != ""])
        frames.append(frame[~repeated])
    return pd.concat(frames, ignore_index=True)


def original_name_key(name) -> str:
    """What makes two original file names the same image: the name without folder and extension,
    case ignored (``""`` for none)."""
    return "" if name is None or name != name else Path(str(name)).stem.lower()  # name != name: NaN


class Manifest:
    """A CSV with ``path,label`` columns (paths relative to the CSV's folder or absolute), or a
    folder holding one as ``manifest.csv``."""

    @staticmethod
    def matches(path: Path) -> bool:
        return path.is_file() or (path / MANIFEST_NAME).is_file()

    @staticmethod
    def read(path: Path) -> pd.DataFrame:
        csv_path = path if path.is_file() else path / MANIFEST_NAME
        table = _read_csv(csv_path)
        missing = {"path", "label"} - set(table.columns)
        if missing:
            raise DatasetError(
                f"{csv_path}: missing column(s) {', '.join(sorted(missing))}; "
                "a manifest needs path,label (and optionally patient_id,source)"
            )
        root = csv_path.parent
        _refuse_nul(table["path"], csv_path)
        _warn_outside(table["path"], root, csv_path)
        paths = [p if Path(p).is_absolute() else str((root / p).resolve()) for p in table["path"]]
        labels = [_canonical_or_raise(label, f"{csv_path}, row {row + 2}") for row, label in enumerate(table["label"])]
        frame = pd.DataFrame(
            {
                "path": paths,
                "label": labels,
                "patient_id": table["patient_id"] if "patient_id" in table else "",
                "source": table["source"] if "source" in table else csv_path.parent.name,
                "original_label": table["label"],
                # Only a name the manifest gives as the original's: generic names (0001.png) recur across datasets.
                "original_name": table["original_name"] if "original_name" in table else "",
            }
        )
        frame = _count_repeats_once(frame, csv_path)
        _check_files_exist(frame, csv_path)
        return frame


class IEEE8023:
    """The covid-chestxray-dataset layout: frontal X-rays, labels from ``finding``, patients from
    ``patientid``; every image's source is ``ieee8023``."""

    @staticmethod
    def matches(path: Path) -> bool:
        return (path / IEEE8023_METADATA).is_file() and (path / "images").is_dir()

    @staticmethod
    def read(root: Path) -> pd.DataFrame:
        table = _read_csv(root / IEEE8023_METADATA)
        missing = {"patientid", "finding", "filename"} - set(table.columns)
        if missing:
            raise DatasetError(f"{root / IEEE8023_METADATA}: missing column(s) {', '.join(sorted(missing))}")
        if "view" in table:
            table = table[table["view"].str.upper().str.replace("_", " ").isin(FRONTAL_VIEWS)]
        else:
            log.warning("%s has no 'view' column: all %d images are used, lateral views too",
                        root / IEEE8023_METADATA, len(table))
        if "modality" in table:
            table = table[table["modality"].str.lower().isin(("x-ray", "xray", "cr", "dx", ""))]
        labels = table["finding"].map(canonical_label)
        skipped = table.loc[labels.isna(), "finding"].value_counts()
        if len(skipped):
            log.info("%s: skipped %d images whose finding is none of the classes: %s",
                     root, int(skipped.sum()), ", ".join(f"{k} ({v})" for k, v in skipped.items()))
        table, labels = table[labels.notna()], labels[labels.notna()]
        _refuse_nul(table["filename"], root / IEEE8023_METADATA, column="filename")
        _warn_outside(table["filename"], root / "images", root / IEEE8023_METADATA)
        frame = pd.DataFrame(
            {
                "path": [str((root / "images" / name).resolve()) for name in table["filename"]],
                "label": labels.values,
                "patient_id": "ieee8023-" + table["patientid"].values,
                "source": "ieee8023",
                "original_label": table["finding"].values,
                "original_name": (table["original_filename"] if "original_filename" in table else table["filename"]).values,
            }
        )
        _check_files_exist(frame, root / IEEE8023_METADATA)
        return frame


class JSRT:
    """The JSRT database (Shiraishi et al. 2000; 247 PA films from Japanese hospitals):
    ``metadata.csv`` with ``filename,nodule`` and ``images/``. A film without a nodule is
    ``normal``; a nodule film is neither normal nor a pneumonia, so it is left out (counted in the
    log). One film per patient; every film's source is ``jsrt``."""

    @staticmethod
    def matches(path: Path) -> bool:
        if not ((path / IEEE8023_METADATA).is_file() and (path / "images").is_dir()):
            return False
        with open(path / IEEE8023_METADATA, encoding="utf-8", errors="replace") as f:
            return {"filename", "nodule"} <= {c.strip() for c in f.readline().split(",")}

    @staticmethod
    def read(root: Path) -> pd.DataFrame:
        table = _read_csv(root / IEEE8023_METADATA)
        _refuse_nul(table["filename"], root / IEEE8023_METADATA, column="filename")
        _warn_outside(table["filename"], root / "images", root / IEEE8023_METADATA)
        nodule = table["nodule"].str.strip().str.lower()
        unknown = sorted(set(nodule) - {"yes", "no"})
        if unknown:
            raise DatasetError(f"{root / IEEE8023_METADATA}: nodule must be yes or no, not {unknown[0]!r}; correct the row")
        log.info("%s: left out %d films with a lung nodule (neither normal nor a pneumonia)", root, int((nodule == "yes").sum()))
        table = table[nodule == "no"]
        stems = table["filename"].map(lambda name: Path(name).stem)
        frame = pd.DataFrame(
            {
                "path": [str((root / "images" / name).resolve()) for name in table["filename"]],
                "label": NORMAL,
                "patient_id": ("jsrt-" + stems).values,
                "source": "jsrt",
                "original_label": "no nodule",
                "original_name": table["filename"].values,
            }
        )
        _check_files_exist(frame, root / IEEE8023_METADATA)
        return frame


class ClassFolders:
    """``ROOT/<class>/<image>``: one folder per class, named by any alias of the class; the source is
    the folder's name."""

    @staticmethod
    def matches(path: Path) -> bool:
        return path.is_dir()

    @staticmethod
    def read(root: Path) -> pd.DataFrame:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DatasetError(
                f"{root}: no class folders, manifest.csv or metadata.csv; lay the images out as "
                f"{root}/<class>/<image> (e.g. covid/, normal/) or pass a CSV with path,label columns"
            )
        rows = []
        for folder in folders:
            label = _canonical_or_raise(folder.name, f"{folder}/")
            images = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p) and not p.name.startswith("."))
            if not images:
                raise DatasetError(f"{folder}: empty class folder; add images to it or remove it")
            rows += [(str(p.resolve()), label, "", root.name, folder.name, "") for p in images]
        return pd.DataFrame(rows, columns=COLUMNS[:-1])


#: The layouts :func:`load_dataset` recognises, tried in this order. A new public layout is one class here.
LAYOUTS = (Manifest, JSRT, IEEE8023, ClassFolders)


def select_task(frame: pd.DataFrame, classes: tuple[str, ...], where: str = "dataset",
                require_all: bool = True) -> pd.DataFrame:
    """Keep the rows of ``classes``; with ``require_all`` every class must have an image."""
    counts = frame["label"].value_counts()
    empty = [c for c in classes if counts.get(c, 0) == 0]
    dropped = {c: int(n) for c, n in counts.items() if c not in classes}
    if dropped:
        log.info("%s: left out %s (not classes of this task)", where,
                 ", ".join(f"{n} {c}" for c, n in dropped.items()))
    if not any(counts.get(c, 0) for c in classes):
        raise DatasetError(f"{where}: no images of {', '.join(classes)}")
    if empty and require_all:
        raise DatasetError(
            f"{where}: no images of class {', '.join(empty)}; this task needs {', '.join(classes)}"
        )
    return frame[frame["label"].isin(classes)].reset_index(drop=True)


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV as strings (empty cells as ""), or a DatasetError naming the file."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError) as error:
        raise DatasetError(f"{path}: cannot read as CSV ({error}); save it as UTF-8 CSV") from None


def _canonical_or_raise(label: str, where: str) -> str:
    canonical = canonical_label(label)
    if canonical is None:
        known = ", ".join(sorted({k.replace(" ", "_") for k in ALIASES if len(k) < 12}))
        raise DatasetError(
            f"{where}: unknown label {label!r}; rename it to covid, normal or pneumonia "
            f"(known aliases include {known})"
        )
    return canonical


def _refuse_nul(values: pd.Series, listed_in: Path, column: str = "path") -> None:
    """A NUL byte cannot be in a file name: name the row that holds one."""
    for row, value in enumerate(values):
        if "\0" in value:
            raise DatasetError(f"{listed_in}, row {row + 2}: the {column} {value!r} holds a NUL byte, which no file "
                               "name can; correct the row (was the file saved as UTF-16? save it as UTF-8 CSV)")


def _warn_outside(values: pd.Series, folder: Path, listed_in: Path) -> None:
    """Warn where a relative path of a list leads out of ``folder`` (``../../etc/passwd``): a
    dataset's list names its own images, and any readable file would otherwise be opened quietly.
    An absolute path is said in full, so it is taken as meant (``write_subset`` writes them)."""
    inside = os.path.abspath(folder)
    outside = [v for v in values if not os.path.isabs(v)
               and os.path.commonpath([inside, os.path.normpath(os.path.join(inside, v))]) != inside]
    if outside:
        more = f" and {len(outside) - 1} more" if len(outside) > 1 else ""
        log.warning("%s: %s%s point outside its folder %s; check that the list is the one you meant to use",
                    printable(listed_in), printable(outside[0]), more, printable(inside))


def _count_repeats_once(frame: pd.DataFrame, listed_in: Path) -> pd.DataFrame:
    """Keep the first row of an image listed twice (same path), with a warning; refuse one listed
    with two labels."""
    repeated = frame["path"].duplicated(keep="first")
    if not repeated.any():
        return frame
    labels = frame.groupby("path", sort=False)["label"].unique()
    conflicting = labels[labels.map(len) > 1]
    if len(conflicting):
        path = conflicting.index[0]
        rows = [str(row + 2) for row in (frame.index[frame["path"] == path])]
        raise DatasetError(f"{listed_in}, rows {', '.join(rows)}: {path} is listed as "
                           f"{' and '.join(conflicting.iloc[0])}; keep one row per image")
    first = int(frame.index[repeated][0])
    earlier = int(frame.index[(frame["path"] == frame.loc[first, "path"]) & ~repeated][0])
    log.warning("%s: %d row(s) list an image already listed (first: row %d repeats row %d, %s); each image is "
                "counted once", printable(listed_in), int(repeated.sum()), first + 2, earlier + 2,
                printable(frame.loc[first, "path"]))
    return frame[~repeated]


def _refuse_names_not_utf8(paths: pd.Series, dataset: Path) -> None:
    """A file name that is not UTF-8 cannot be written to split.csv, metrics.json or a report and read
    back, so it cannot be part of a run; refusing (rather than leaving the images out) keeps a
    dataset whole: one rename fixes every name at once."""
    bad = [p for p in paths if not _is_utf8(p)]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DatasetError(f"{printable(bad[0])}{more}: the file name is not valid UTF-8 (an archive made on "
                           f"Windows?); rename to UTF-8, e.g. convmv -r -f cp1252 -t utf-8 --notest {dataset} "
                           "(or unzip the archive again with unzip -O cp437)")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept by os.fsdecode as lone surrogates
        return False
    return True


def _check_files_exist(frame: pd.DataFrame, listed_in: Path) -> None:
    missing = [p for p in frame["path"] if not Path(p).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DatasetError(f"{missing[0]}{more}: listed in {listed_in} but missing; restore the file(s) or remove their rows")


def confounded_classes(labels, sources) -> dict[str, list[str]]:
    """Classes whose every image comes from sources that hold no other class: ``{class: [sources]}``.

    For such a class the source alone gives the label away, so a model can score well by
    recognising the hospital, scanner or annotation style instead of the disease.
    """
    labels, sources = np.asarray(labels, dtype=str), np.asarray(sources, dtype=str)
    if len(np.unique(sources)) < 2:
        return {}
    classes_of = {s: set(labels[sources == s]) for s in np.unique(sources)}
    found = {}
    for label in np.unique(labels):
        own = sorted(set(sources[labels == label]))
        if all(classes_of[s] == {label} for s in own):
            found[str(label)] = own
    return found


def confounding_warning(labels, sources) -> str | None:
    """One sentence naming the classes that come from a source of their own, or None."""
    found = confounded_classes(labels, sources)
    if not found:
        return None
    parts = [f"every {label} image comes from {', '.join(srcs)}, which {'holds' if len(srcs) == 1 else 'hold'} no other class"
             for label, srcs in found.items()]
    return ("Labels are confounded with the source: " + "; ".join(parts)
            + ". A model can score well here by recognising the source instead of the disease; "
              "check it on other hospitals' images and with covidxray probe.")
