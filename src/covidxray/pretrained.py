"""The model that ships with covidxray, used when ``predict`` (or ``serve``) gets no ``--run``.

It is a run directory inside the package (``covidxray/pretrained/``): ``model.keras`` (weights
only, no optimizer state), ``config.json``, ``calibration.json``, ``metrics.json`` and
``MODEL_CARD.md``, which says what it was trained on, how it scores, where it fails and what it
must not be used for. :func:`package_run` makes such a folder from a finished run.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from covidxray import rundir
from covidxray.errors import CovidXrayError

PACKAGED_FILES = (rundir.CONFIG, rundir.CALIBRATION, rundir.METRICS)
MODEL_CARD = "MODEL_CARD.md"


def default_run_dir() -> Path:
    """The packaged model's folder; a clear error if this installation lacks it."""
    folder = Path(str(files("covidxray") / "pretrained"))
    if not (folder / rundir.MODEL).is_file():
        raise CovidXrayError(f"{folder}: this installation has no packaged model; pass --run RUN_DIR "
                             "(a folder written by covidxray train)")
    return folder


def package_run(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a finished run into ``dest`` for shipping: the model without optimizer state, its settings
    and metrics. ``dest``'s model card is left as it is."""
    run = rundir.RunDir(run_dir)
    model = run.load_model()  # loaded without compiling: saving it stores no optimizer state
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    from covidxray.files import atomic_save

    atomic_save(dest / rundir.MODEL, model.save)
    for name in PACKAGED_FILES:
        shutil.copyfile(run.require(name), dest / name)
    return dest
