"""Presets: trained models that ship with covidxray, loadable by name (keras-hub's word).

A preset is a run folder inside the package (``covidxray/presets/NAME/``): ``model.keras``
(weights only, no optimizer state), ``config.json``, ``calibration.json``, ``metrics.json``,
``split.csv`` (which images it trained and validated on, each path under the folder that holds
its dataset, ``darkcovidnet/covid/x.png``: ``evaluate`` leaves those out),
``familiarity.npz`` where the run has one (what flags an X-ray unlike the training data) and
``MODEL_CARD.md``, which says what it was trained on, how it scores, where it fails and what it
must not be used for. Commands take one with ``--run preset:NAME`` (or ``--preset NAME``);
``predict``, ``evaluate`` and ``serve`` use :data:`DEFAULT_PRESET` when given no run.
:func:`package_run` makes a preset folder from a finished run, a classifier's or a lung segmenter's.
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


def describe(name: str) -> str:
    """One line on a preset, from its own files: what it was trained on, how it scored on its own
    test split, and where its card says what it fails on."""
    import json

    from covidxray.data.sources import as_paths

    folder = preset_dir(name)
    test = json.loads((folder / rundir.METRICS).read_text())["test"]
    card = f"where it fails: {folder.name}/{MODEL_CARD}"
    if (folder / SEGMENTER_SETTINGS).is_file():
        return f"lung segmenter; held-out Dice {test['all']['dice']:.3f} on {test['all']['n']} films; {card}"
    config = json.loads((folder / rundir.CONFIG).read_text())
    data = ", ".join(Path(d).name for d in as_paths(config["data"]))
    recipe = f", recipe {config['recipe']}" if config.get("recipe") else ""
    return (f"{config['task']}, {data}{recipe}; own test split: accuracy {test['accuracy']:.1%}, COVID AUC "
            f"{test['covid']['auc']:.3f}; {card}")


def package_run(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a finished run, a classifier's or a lung segmenter's (``covidxray lungs train``), into
    ``dest`` to ship it as a preset: its model without optimizer state, its settings, metrics, split
    (and history, and familiarity file) where it has them, every path under its datasets written
    relative to the folder that holds them (``darkcovidnet/covid/x.png``, ``jsrt/images/JPCLN001.png``),
    so that no file names the machine it was trained on. A segmenter's failure drawings stay behind
    (pictures of the data); ``dest``'s model card is left as it is."""
    import json

    from covidxray.data.sources import as_paths, dataset_root
    from covidxray.files import atomic_save, atomic_write_text
    from covidxray.models import load_model

    run = rundir.RunDir(run_dir)
    if (run.path / SEGMENTER_SETTINGS).is_file():
        data = json.loads(run.require(SEGMENTER_SETTINGS).read_text())["training"]["data"]
        files = (SEGMENTER_SETTINGS, rundir.METRICS, rundir.SPLIT, rundir.HISTORY)
    else:
        data = run.load_config().data
        files = PACKAGED_FILES + ((rundir.SPLIT,) if run.file(rundir.SPLIT).is_file() else ())  # without it, evaluate finds no seen image
    roots = [dataset_root(d) for d in as_paths(data)]
    parents = {str(p) for root in roots for p in (root.parent, root.resolve().parent)} - {"."}
    prefixes = sorted((p.rstrip("/") + "/" for p in parents), key=len, reverse=True)
    model = load_model(run.require(rundir.MODEL))  # loaded without compiling: saving it stores no optimizer state
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_save(dest / rundir.MODEL, model.save)
    for name in files:
        text = run.require(name).read_text()
        for prefix in prefixes:
            text = text.replace(prefix, "")
        atomic_write_text(dest / name, text)
    if (run.path / rundir.FAMILIARITY).is_file():  # without it, nothing is flagged as unlike the training data
        shutil.copyfile(run.path / rundir.FAMILIARITY, dest / rundir.FAMILIARITY)
    return dest
