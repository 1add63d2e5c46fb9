"""Several trained runs as one run: ``covidxray ensemble --run A --run B --out DIR``.

The ensemble run folder holds one ``model.keras`` that averages the members' probabilities
(:func:`covidxray.models.ensemble.average_models`), so predict, evaluate, serve, export and a
preset read it as they read any run, and decide by one rule: the most probable class of the
average (no temperature: each member's own scaling would no longer apply to the mean). Members
must share the task, input size and preprocessing. Its ``split.csv`` counts an image (its pixels,
where the members' splits record them: a shipped preset lists its images relative to their
dataset folder, a run by full path) as trained on when any member trained or validated on it, and
as test otherwise; ``metrics.json`` holds the ensemble's metrics on those test images that are on
this machine (none when every image trained a member, as with the folds of one cross-validation:
evaluate it on other data).
``metrics.json`` names the members. An ensemble has no ``familiarity.npz``: it flags nothing
as unlike its training data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from covidxray import rundir
from covidxray.errors import CovidXrayError
from covidxray.files import atomic_save
from covidxray.inference.preprocess import Preprocessing

log = logging.getLogger(__name__)


def make_ensemble(runs: list, out: str | Path, *, overwrite: bool = False) -> dict:
    """Write the ensemble of ``runs`` (run folders or ``preset:NAME``) into ``out``; returns its metrics."""
    from covidxray.models import load_model
    from covidxray.models.ensemble import average_models
    from covidxray.presets import resolve_run

    members = [rundir.RunDir(resolve_run(run, None)) for run in runs]
    if len({m.path.resolve() for m in members}) < len(members) or len(members) < 2:
        raise CovidXrayError(f"{', '.join(map(str, runs))}: an ensemble needs two or more different runs")
    target = rundir.RunDir(out)
    if any(target.path.resolve() == m.path.resolve() for m in members):
        raise CovidXrayError(f"--out {out} is one of the members; choose a new folder")
    target.refuse_to_replace(overwrite)
    configs = [m.load_config() for m in members]
    _check_alike(members, configs)
    model = average_models([load_model(m.require(rundir.MODEL)) for m in members])
    split = _common_split(members)
    target.create()
    configs[0].save(target.file(rundir.CONFIG), members[0].load_runtime())
    if split is not None:
        rundir.write_csv(target.file(rundir.SPLIT), split)
    atomic_save(target.file(rundir.MODEL), model.save)
    metrics = {"members": [str(m.path) for m in members], "test": None}
    held_out = split[split["split"] == "test"] if split is not None else pd.DataFrame(columns=["path"])
    test = held_out[held_out["path"].map(_on_disk)]
    if len(test) < len(held_out):
        log.info("%d of the ensemble's test images are not on this machine: not scored", len(held_out) - len(test))
    if len(test):
        from covidxray.evaluation.evaluate import evaluate

        manifest = target.file(".ensemble-test.csv")
        test.drop(columns="split").to_csv(manifest, index=False)
        try:
            metrics["test"] = evaluate(target.path, str(manifest), include_seen=True)
        finally:
            manifest.unlink()
    else:
        log.info("every image trained or validated a member: evaluate the ensemble on other data (covidxray evaluate)")
    target.write_json(rundir.METRICS, metrics)
    return metrics


def _check_alike(members: list[rundir.RunDir], configs: list) -> None:
    """Raise unless every member has the first one's task, input size and preprocessing."""
    def shape(config):
        return {"task": config.task, "image_size": config.image_size,
                **Preprocessing.from_config(config).settings()}

    first = shape(configs[0])
    for member, config in zip(members[1:], configs[1:]):
        differ = {k: v for k, v in shape(config).items() if first.get(k) != v}
        if differ:
            name, value = next(iter(differ.items()))
            raise CovidXrayError(f"{member.path}: {name} is {value!r}, {members[0].path}'s {first.get(name)!r}; an "
                                 "ensemble's runs must share the task, input size and preprocessing")


def _common_split(members: list[rundir.RunDir]) -> pd.DataFrame | None:
    """One row per image of any member: ``train`` where a member trained or validated on it, else
    ``test`` (None when no member has a ``split.csv``)."""
    splits = [m.read_split(columns=("path", "split")) for m in members if m.file(rundir.SPLIT).is_file()]
    if not splits:
        return None
    table = pd.concat(splits, ignore_index=True)
    key = "pixels" if "pixels" in table and (table["pixels"].fillna("") != "").all() else "path"
    used = set(table.loc[table["split"].isin(("train", "validation")), key])
    on_disk = table["path"].map(_on_disk)
    first = table.loc[on_disk.sort_values(ascending=False, kind="stable").index]  # a row whose file is here first
    first = first.drop_duplicates(key, keep="first").sort_index().copy()
    first["split"] = ["train" if image in used else "test" for image in first[key]]
    return first.reset_index(drop=True)


def _on_disk(path: str) -> bool:
    """True for a split's full path to a file on this machine (a shipped preset's are relative)."""
    return Path(path).is_absolute() and Path(path).is_file()
