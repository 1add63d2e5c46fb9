"""``covidxray data audit``: what one or several datasets hold, before any training.

:func:`audit_datasets` reads each dataset as it is (:func:`~covidxray.data.sources.load_dataset`,
nothing dropped) and returns one JSON-able dict:

- ``datasets``: per dataset path, its images per class, patients, images without a patient id and sources;
- ``sources``: per source (across datasets), its images per class and what a held-out-source test
  on it can measure (``covid-auc``, ``sensitivity`` or ``specificity``), if the other sources leave
  COVID and another class to train on;
- ``confounding``: the sources of each class, and the classes that come from one source alone;
- ``exact_duplicates``: groups of images with identical decoded pixels;
- ``near_duplicates``: every pair :func:`~covidxray.data.duplicates.near_duplicate_pairs` finds
  (identical pairs left out), within or across datasets, with their three scores;
- ``label_conflicts``: identical or near-duplicate pairs whose labels differ;
- ``unreadable``: the files that do not decode (path -> why); the audit goes on without them;
- ``verdict``: plain sentences (what ``covidxray data audit`` prints); ``rule`` and ``seconds``.

:func:`covidxray.reports.audit_report.write_audit` writes it into a folder, with its report and figure.
The verdict says what :func:`~covidxray.data.loading.load_labelled_images` does when the datasets
are combined: an image repeated in a later dataset is counted once, near-duplicates whose labels
disagree are left out, and splits keep copies within a dataset together.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray.data.cache import ImageCache
from covidxray.data.duplicates import FINGERPRINT_SIDE, NearDuplicateRule, fingerprint_images, near_duplicate_pairs
from covidxray.data.sources import (
    MANIFEST_NAME,
    as_paths,
    confounded_classes,
    confounding_warning,
    load_dataset,
    original_name_key,
)
from covidxray.data.splits import without_patient_id
from covidxray.errors import DatasetError
from covidxray.labels import COVID, TASKS

log = logging.getLogger(__name__)

#: What a held-out-source test measures, by what the source holds; in the order the verdict lists them.
MEASURES = {"covid-auc": "COVID AUC", "sensitivity": "sensitivity", "specificity": "specificity"}
CLASS_ORDER = TASKS["three-class"]
IDENTICAL, NEAR = "identical", "near-duplicate"


def audit_datasets(data: list[str] | str, *, cache_dir=None,
                   rule: NearDuplicateRule | None = None) -> dict:
    """Audit one or several datasets (paths as ``--data`` takes them); writes nothing but the cache."""
    started = time.perf_counter()
    rule = rule or NearDuplicateRule()
    paths = as_paths(data)
    if len(set(paths)) < len(paths):
        raise DatasetError(f"{', '.join(paths)}: a dataset is named twice; name each --data once")
    frames = [load_dataset(path) for path in paths]
    names = dataset_names(paths)
    for frame, path in zip(frames, paths, strict=True):
        frame["name"] = names[path]
    table = pd.concat(frames, ignore_index=True)
    decoded = ImageCache(cache_dir).load(list(table["path"]), FINGERPRINT_SIDE)
    ok = decoded.ok
    digests = [d or "" for d in decoded.pixel_digests]
    for message in decoded.failed.values():
        log.warning("unreadable: %s", message)

    groups = _identical_groups(digests)
    readable = np.flatnonzero(ok)
    found = near_duplicate_pairs(fingerprint_images(decoded.images[readable]), rule=rule)
    a, b = readable[found["a"].to_numpy()], readable[found["b"].to_numpy()]
    scores = found.assign(a=a, b=b)
    scores = scores[np.array([digests[i] != digests[j] for i, j in zip(a, b, strict=True)], dtype=bool)]  # identical: listed apart

    exact = _exact_section(table, groups)
    near = _near_section(table, scores)
    result = {
        "data": paths,
        "datasets": {path: _dataset_summary(path, frame, decoded.failed) for path, frame in zip(paths, frames, strict=True)},
        "sources": _source_summary(table),
        "confounding": _confounding(table),
        "exact_duplicates": exact,
        "near_duplicates": near,
        "label_conflicts": _label_conflicts(table, groups, near["pairs"]),
        "same_original_name": _same_original_name(table),
        "unreadable": dict(decoded.failed),
        "rule": asdict(rule),
    }
    result["verdict"] = verdict(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def dataset_names(paths: list[str]) -> dict[str, str]:
    """A short name per dataset path: the folder's name (a manifest: its folder's, or its own stem);
    the path itself where two would share a name."""
    def short(path: str) -> str:
        p = Path(path).expanduser()
        if p.suffix.lower() == ".csv":
            return p.parent.name if p.name == MANIFEST_NAME and p.parent.name else p.stem
        return p.name or str(p)

    names = {path: short(path) for path in paths}
    counts = pd.Series(list(names.values())).value_counts()
    return {path: name if counts[name] == 1 else path for path, name in names.items()}


def class_order(labels) -> list[str]:
    """The classes present, in the tasks' order (covid, normal, pneumonia), others after them."""
    present = set(labels)
    return [c for c in CLASS_ORDER if c in present] + sorted(present - set(CLASS_ORDER))


def class_name(label: str) -> str:
    return "COVID" if label == COVID else label


def _counts(values, order=None) -> dict[str, int]:
    counts = pd.Series(values, dtype=object).value_counts()
    keys = order if order is not None else sorted(counts.index)
    return {str(k): int(counts[k]) for k in keys if k in counts.index}


def _dataset_summary(path: str, frame: pd.DataFrame, failed: dict[str, str]) -> dict:
    patients = frame["patient_id"].fillna("").astype(str)
    folder = Path(path).expanduser().resolve()
    return {
        "name": str(frame["name"].iloc[0]),
        "folder": str(folder.parent if folder.is_file() else folder),  # image paths are shown relative to it
        "images": len(frame),
        "classes": _counts(frame["label"], class_order(frame["label"])),
        "patients": int(patients[patients != ""].nunique()),
        "without_patient_id": int(without_patient_id(frame).sum()),
        "sources": _counts(frame["source"].astype(str)),
        "unreadable": int(frame["path"].isin(list(failed)).sum()),
    }


def _source_summary(table: pd.DataFrame) -> dict:
    sources = table["source"].astype(str)
    summary = {}
    for source in sorted(sources.unique()):
        here, rest = table[sources == source], table[sources != source]
        classes = _counts(here["label"], class_order(here["label"]))
        has_covid, others = COVID in classes, any(c != COVID for c in classes)
        measure = "covid-auc" if has_covid and others else ("sensitivity" if has_covid else "specificity")
        if rest.empty:
            why = "no other source to train on"
        elif not (rest["label"] == COVID).any():
            why = "the other sources hold no COVID images"
        elif not (rest["label"] != COVID).any():
            why = "the other sources hold only COVID images"
        else:
            why = None
        summary[source] = {"images": len(here), "classes": classes, "datasets": list(dict.fromkeys(here["name"])),
                           "measure": measure, "held_out": why is None, "why_not": why}
    return summary


def _confounding(table: pd.DataFrame) -> dict:
    labels, sources = table["label"].astype(str), table["source"].astype(str)
    classes = {c: sorted(sources[labels == c].unique()) for c in class_order(labels)}
    single = {c: s[0] for c, s in classes.items() if len(s) == 1}
    return {"classes": classes, "single_source": single, "own_source": confounded_classes(labels, sources),
            "sentence": _single_source_sentence(single, n_sources=sources.nunique(), n_classes=len(classes)),
            "warning": confounding_warning(labels, sources)}


def _single_source_sentence(single: dict[str, str], n_sources: int, n_classes: int) -> str | None:
    if not single:
        return None
    if n_sources == 1:
        source = next(iter(single.values()))
        return (f"All images come from one source ({source}): the source column cannot show whether a class "
                "comes from hospitals of its own.")
    by_source: dict[str, list[str]] = {}
    for label, source in single.items():
        by_source.setdefault(source, []).append(class_name(label))
    listed = "; ".join(f"{_and(labels)} only from {source}" for source, labels in by_source.items())
    if len(single) == n_classes:
        return (f"Every class comes from a single source ({listed}): the classes are confounded with the source, so "
                "a model can score well by recognising the source instead of the disease.")
    if len(single) == 1:
        label, source = next(iter(single.items()))
        return f"{class_name(label)} comes only from {source}: for it a model can learn the source instead of the disease."
    return f"Some classes come from a single source ({listed}): for them a model can learn the source instead of the disease."


def _identical_groups(digests: list[str]) -> list[list[int]]:
    """Rows with the same decoded pixels, groups of two or more, in row order."""
    rows: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        if digest:
            rows.setdefault(digest, []).append(i)
    return [members for members in rows.values() if len(members) > 1]


def _record(table: pd.DataFrame, i: int) -> dict:
    return {"path": str(table.at[i, "path"]), "dataset": str(table.at[i, "name"]), "label": str(table.at[i, "label"])}


def _elsewhere(table: pd.DataFrame, rows) -> dict:
    """Per dataset name, the images (and per class) among ``rows``."""
    chosen = table.loc[sorted(set(int(r) for r in rows))]
    found = {}
    for name in dict.fromkeys(table["name"]):
        mine = chosen[chosen["name"] == name]
        if len(mine):
            found[str(name)] = {"images": len(mine), "classes": _counts(mine["label"], class_order(mine["label"]))}
    return found


def _exact_section(table: pd.DataFrame, groups: list[list[int]]) -> dict:
    names = table["name"].to_numpy()
    listed, spread = [], []
    for members in groups:
        across = len(set(names[members])) > 1
        labels = {table.at[m, "label"] for m in members}
        listed.append({"images": [_record(table, m) for m in members], "across": across, "labels_differ": len(labels) > 1})
        if across:
            spread += [m for m in members if any(names[o] != names[m] for o in members)]
    return {"groups": listed, "images": sum(len(g) for g in groups), "across": sum(g["across"] for g in listed),
            "within": sum(not g["across"] for g in listed), "elsewhere": _elsewhere(table, spread)}


def _near_section(table: pd.DataFrame, scores: pd.DataFrame) -> dict:
    names, labels = table["name"].to_numpy(), table["label"].to_numpy()
    pairs = []
    for a, b, phash, layout, detail in scores[["a", "b", "phash", "layout", "detail"]].itertuples(index=False):
        pairs.append({"a": _record(table, a), "b": _record(table, b), "phash": int(phash),
                      "layout": round(float(layout), 4), "detail": round(float(detail), 4),
                      "across": bool(names[a] != names[b]), "labels_differ": bool(labels[a] != labels[b])})
    # Label conflicts first, then pairs across datasets, then within one; each from the least certain.
    order = sorted(range(len(pairs)), key=lambda k: (not pairs[k]["labels_differ"], not pairs[k]["across"],
                                                     pairs[k]["detail"], k))
    pairs = [pairs[k] for k in order]
    across_rows = scores[np.array([names[a] != names[b] for a, b in zip(scores["a"], scores["b"], strict=True)], dtype=bool)]
    return {"pairs": pairs, "within": sum(not p["across"] for p in pairs), "across": sum(p["across"] for p in pairs),
            "elsewhere": _elsewhere(table, [*across_rows["a"], *across_rows["b"]])}


def _label_conflicts(table: pd.DataFrame, groups: list[list[int]], near_pairs: list[dict]) -> list[dict]:
    conflicts = []
    for members in groups:
        for k, i in enumerate(members):
            for j in members[k + 1:]:
                if table.at[i, "label"] != table.at[j, "label"]:
                    a, b = _record(table, i), _record(table, j)
                    conflicts.append({"kind": IDENTICAL, "a": a, "b": b, "across": a["dataset"] != b["dataset"]})
    conflicts += [{"kind": NEAR, "a": p["a"], "b": p["b"], "across": p["across"]} for p in near_pairs if p["labels_differ"]]
    return conflicts


# The verdict: plain sentences from the result alone.

def verdict(result: dict) -> list[str]:
    """What the audit found, in sentences a user can act on."""
    lines = [_class_sources_sentence(result["confounding"]["classes"])]
    sources = result["sources"]
    possible = [s for s, v in sources.items() if v["held_out"]]
    confounded = result["confounding"]["sentence"]
    if confounded:
        if len(sources) > 1 and not possible and confounded.startswith("Every class"):
            confounded = confounded[:-1] + ", and held-out-source evaluation is not possible."
        elif len(sources) == 1:
            confounded = confounded[:-1] + "; held-out-source evaluation is not possible."
        lines.append(confounded)
    if len(sources) > 1:
        if possible:
            ranked = sorted(possible, key=lambda s: (list(MEASURES).index(sources[s]["measure"]), s))
            lines.append("Held-out-source evaluation is possible for: "
                         + ", ".join(f"{s} ({MEASURES[sources[s]['measure']]})" for s in ranked) + ".")
            impossible = [s for s in sources if not sources[s]["held_out"]]
            if impossible:
                lines.append("It is not possible for: "
                             + ", ".join(f"{s} ({sources[s]['why_not']})" for s in impossible) + ".")
        elif not lines[-1].endswith("held-out-source evaluation is not possible."):
            lines.append("Held-out-source evaluation is not possible: leaving out any one source leaves no COVID "
                         "images, or no other class, to train on.")
    for summary in result["datasets"].values():
        missing, total = summary["without_patient_id"], summary["images"]
        if missing:
            lines.append(f"{summary['name']}: no patient id for {missing} of {total} images; a split cannot keep "
                         "one patient's X-rays together there.")
    lines += _duplicate_sentences(result)
    if result["same_original_name"]:
        named = result["same_original_name"]
        lines.append(f"{_images_of({k: {'images': v} for k, v in named.items()}, 'has', 'have')} the original file "
                     "name of an image of an earlier dataset (re-cropped copies among them, which the pixels do not "
                     "show): combining these datasets counts each once.")
    if result["unreadable"]:
        n = len(result["unreadable"])
        lines.append(f"{_n(n, 'file')} could not be decoded (listed under unreadable): training skips "
                     f"{'them' if n > 1 else 'it'}.")
    return lines


def _same_original_name(table: pd.DataFrame) -> dict[str, int]:
    """Per dataset, its images whose original file name (case and extension ignored) an earlier
    dataset's image has: what :func:`~covidxray.data.sources.load_datasets` counts once."""
    keys = table["original_name"].map(original_name_key)
    seen, found = set(), {}
    for name in dict.fromkeys(table["name"]):
        mine = keys[table["name"] == name]
        repeated = int((mine.isin(seen) & (mine != "")).sum())
        if repeated:
            found[str(name)] = repeated
        seen |= set(mine[mine != ""])
    return found


def _duplicate_sentences(result: dict) -> list[str]:
    exact, near, conflicts = result["exact_duplicates"], result["near_duplicates"], result["label_conflicts"]
    lines = []
    if exact["across"]:
        lines.append(f"{_images_of(exact['elsewhere'], 'has', 'have')} an identical copy (same decoded pixels) in another dataset: "
                     "combining these datasets counts each once"
                     + _conflict_note([c for c in conflicts if c["kind"] == IDENTICAL and c["across"]]) + ".")
    if near["across"]:
        across = [c for c in conflicts if c["kind"] == NEAR and c["across"]]
        sentence = f"{_images_of(near['elsewhere'], 'is a near-duplicate', 'are near-duplicates')} of images in other datasets"
        if across:
            n = len(across)
            left_out = f"the {n} conflicting pairs" if n > 1 else "the conflicting pair"
            sentence += (f"; {_n(n, 'pair')} {'disagree' if n > 1 else 'disagrees'} on the label: combining these "
                         f"datasets counts each once and leaves {left_out} out.")
        else:
            sentence += ": combining these datasets counts each once."
        lines.append(sentence)
    within_exact = [g for g in exact["groups"] if not g["across"]]
    within_near = [p for p in near["pairs"] if not p["across"]]
    if within_exact or within_near:
        parts = []
        for name in _names(result):
            groups = sum(g["images"][0]["dataset"] == name for g in within_exact)
            pairs = sum(p["a"]["dataset"] == name for p in within_near)
            found = [_n(groups, "group") + " of identical images"] if groups else []
            found += [_n(pairs, "near-duplicate pair")] if pairs else []
            if found:
                parts.append(f"{' and '.join(found)} in {name}")
        lines.append(f"Within a dataset: {'; '.join(parts)}; splits keep copies together.")
    within_conflicts = [c for c in conflicts if not c["across"]]
    if within_conflicts:
        n = len(within_conflicts)
        lines.append(f"{_n(n, 'pair')} of copies within one dataset {'disagree' if n > 1 else 'disagrees'} on the "
                     f"label: training leaves {'them' if n > 1 else 'it'} out.")
    if not exact["groups"] and not near["pairs"]:
        lines.append("No identical or near-duplicate images were found.")
    return lines


def _conflict_note(conflicts: list[dict]) -> str:
    if not conflicts:
        return ""
    n = len(conflicts)
    return f"; {_n(n, 'pair')} {'disagree' if n > 1 else 'disagrees'} on the label and {'are' if n > 1 else 'is'} left out"


def _images_of(elsewhere: dict, one: str, many: str) -> str:
    """``90 images of radiography-db and 12 of darkcovidnet`` (most first), then ``one`` or ``many``."""
    ranked = sorted(elsewhere.items(), key=lambda item: -item[1]["images"])
    parts = [f"{_n(v['images'], 'image')} of {name}" if k == 0 else f"{v['images']} of {name}"
             for k, (name, v) in enumerate(ranked)]
    verb = one if len(ranked) == 1 and ranked[0][1]["images"] == 1 else many
    return f"{_and(parts)} {verb}"


def _class_sources_sentence(classes: dict[str, list[str]]) -> str:
    parts = []
    for k, (label, sources) in enumerate(classes.items()):
        count = _n(len(sources), "source") if k == 0 else str(len(sources))
        parts.append(f"{class_name(label)} {'comes ' if k == 0 else ''}from {count} ({', '.join(sources)})")
    return _and(parts) + "."


def _names(result: dict) -> list[str]:
    return [summary["name"] for summary in result["datasets"].values()]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


