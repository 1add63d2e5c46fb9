"""Presets: trained models that ship with covidxray, loadable by name (keras-hub's word).

A preset is a run folder inside the package (``covidxray/presets/NAME/``): ``model.keras``
(weights only, no optimizer state), ``config.json``, ``calibration.json``, ``metrics.json``,
``split.csv`` (which images it trained and validated on, each path under its dataset's folder
name, ``darkcovidnet/covid/x.png``: ``evaluate`` leaves those out),
``familiarity.npz`` where the run has one (what flags an X-ray unlike the training data) and
``MODEL_CARD.md``, which says what it was trained on, how it scores, where it fails and what it
must not be used for. Commands take one with ``--run preset:NAME`` (or ``--preset NAME``);
``predict``, ``evaluate`` and ``serve`` use :data:`DEFAULT_PRESET` when given no run.
:func:`package_run` makes a preset folder from a finished run.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from covidxray import rundir
from covidxray.errors import CovidXrayError

DEFAULT_PRESET = "compactnet_darkcovidnet_ieee8023_radiographydb"
CLASSIFIER, LUNG_SEGMENTER = "classifier", "lung-segmenter"
SEGMENTER_SETTINGS = "segmenter.json"  # what marks a lung segmenter's folder (covidxray.training.segmentation)
PREFIX = "preset:"
PACKAGED_FILES = (rundir.CONFIG, rundir.CALIBRATION, rundir.METRICS)
MODEL_CARD = "MODEL_CARD.md"


def presets_root() -> Path:
    return Path(str(files("covidxray") / "presets"))


def preset_kind(folder: Path) -> str:
    """``"classifier"`` (a run of covidxray train) or ``"lung-segmenter"`` (covidxray lungs train)."""
    return LUNG_SEGMENTER if (Path(folder) / SEGMENTER_SETTINGS).is_file() else CLASSIFIER


def list_presets(kind: str = "classifier") -> list[str]:
    """Names of the presets of ``kind`` this installation has."""
    root = presets_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / rundir.MODEL).is_file() and preset_kind(p) == kind)


def preset_dir(name: str = DEFAULT_PRESET) -> Path:
    """The folder of preset ``name``; a clear error naming the known ones if there is none."""
    folder = presets_root() / name
    if not (folder / rundir.MODEL).is_file():
        known = list_presets()
        raise CovidXrayError(f"no preset {name!r} in this installation ({folder}); "
                             + (f"known presets: {', '.join(known)}" if known else
                                "it has none: pass --run RUN_DIR (a folder written by covidxray train)"))
    return folder


def resolve_run(run: str | Path | None = None, preset: str | None = None) -> Path:
    """The folder of a run: ``run`` itself, ``preset:NAME`` or ``preset`` by name, else the default preset."""
    if run is not None and preset is not None:
        raise CovidXrayError("give either --run or --preset, not both")
    if preset is not None:
        return preset_dir(preset)
    if run is None:
        return preset_dir(DEFAULT_PRESET)
    if str(run).startswith(PREFIX):
        return preset_dir(str(run)[len(PREFIX):])
    return Path(run)


def package_run(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a finished run into ``dest`` for shipping: the model without optimizer state, its settings,
    metrics and, where the run has them, its split and familiarity file. ``dest``'s model card is left
    as it is."""
    from covidxray.files import atomic_save
    from covidxray.models import load_model

    run = rundir.RunDir(run_dir)
    model = load_model(run.require(rundir.MODEL))  # loaded without compiling: saving it stores no optimizer state
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_save(dest / rundir.MODEL, model.save)
    for name in PACKAGED_FILES:
        shutil.copyfile(run.require(name), dest / name)
    if (run.path / rundir.SPLIT).is_file():  # without it, evaluate finds no seen image
        rundir.write_csv(dest / rundir.SPLIT, portable_split(run.read_split()))
    if (run.path / rundir.FAMILIARITY).is_file():  # without it, nothing is flagged as unlike the training data
        shutil.copyfile(run.path / rundir.FAMILIARITY, dest / rundir.FAMILIARITY)
    return dest


def portable_split(split):
    """``split.csv`` with each path made relative to the folder that holds its dataset
    (``/home/me/data/darkcovidnet/covid/x.png`` -> ``darkcovidnet/covid/x.png``) and each dataset
    named by its folder, so that a shipped preset names no folder of the machine it was trained on;
    ``evaluate`` finds the files again beside the datasets it is given."""
    paths, datasets = [], []
    for path, dataset in zip(split["path"], split.get("dataset", [""] * len(split))):
        root = Path(dataset)
        root = root.parent if root.suffix.lower() == ".csv" else root  # a manifest: paths are under its folder
        parts = Path(path).parts
        at = max((i for i, part in enumerate(parts[:-1]) if part == root.name), default=None) if root.name else None
        paths.append(Path(*parts[at:]).as_posix() if at is not None else Path(path).name)
        datasets.append(root.name)
    return split.assign(path=paths, **({"dataset": datasets} if "dataset" in split else {}))
