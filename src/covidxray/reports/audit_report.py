"""``audit.md`` and ``near_duplicates.png``: a dataset audit (:mod:`covidxray.data.audit`) for people.

:func:`render_audit_report` renders ``audit.json``'s content as Markdown (verdict first, then a
section with a table per finding); :func:`plot_near_duplicates` draws the near-duplicate pairs side
by side, the ones to check first (label conflicts, then pairs across datasets from the least
certain) at the top; :func:`write_audit` writes ``audit.json``, ``audit.md`` (with ``audit.html``)
and the sheet into a folder, which :func:`check_out` checks before any work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from covidxray.errors import CovidXrayError
from covidxray.files import atomic_write_text, check_can_create, is_temporary
from covidxray.reports.markdown import DISCLAIMER, code_md, escape_md, save_figure, write_report

AUDIT_JSON, AUDIT_REPORT, AUDIT_HTML, AUDIT_SHEET = "audit.json", "audit.md", "audit.html", "near_duplicates.png"
AUDIT_FILES = (AUDIT_JSON, AUDIT_REPORT, AUDIT_HTML, AUDIT_SHEET)
#: Rows of a pairs or groups table in audit.md; audit.json holds them all.
MAX_TABLE_ROWS = 100
MEASURE_TEXT = {"covid-auc": "COVID AUC (and sensitivity, specificity)", "sensitivity": "COVID sensitivity only (COVID alone)",
                "specificity": "COVID specificity only (no COVID)"}
CONFLICT_COLOR, WITHIN_COLOR = "#c0392b", "#555555"


def render_audit_report(result: dict) -> str:
    """``audit.md``: the verdict, then datasets, sources, confounding, identical images, near-duplicates,
    label conflicts and unreadable files."""
    datasets = result["datasets"]
    folders = {d["name"]: d["folder"] for d in datasets.values() if "folder" in d}
    classes = _classes(result)
    total = sum(d["images"] for d in datasets.values())
    lines = ["# covidxray data audit", "", DISCLAIMER, "",
             f"- data: {', '.join(code_md(p) for p in datasets)}: {total} images",
             f"- took {result['seconds']:.1f} s", "", "## Verdict", ""]
    lines += [f"- {escape_md(sentence)}" for sentence in result["verdict"]]

    lines += ["", "## Datasets", "",
              "| dataset | images | " + " | ".join(escape_md(c) for c in classes) + " | patients | without patient id "
              "| sources | unreadable |",
              "|---|---:|" + "---:|" * len(classes) + "---:|---:|---|---:|"]
    for path, d in datasets.items():
        counts = " | ".join(str(d["classes"].get(c, 0)) for c in classes)
        sources = ", ".join(f"{escape_md(s)} ({n})" for s, n in d["sources"].items())
        lines.append(f"| {escape_md(d['name'])} ({code_md(path)}) | {d['images']} | {counts} | {d['patients']} "
                     f"| {d['without_patient_id']} | {sources} | {d.get('unreadable', 0)} |")

    lines += ["", "## Sources", "",
              "What a model trained on the other sources and tested on this one can measure.", "",
              "| source | datasets | images | " + " | ".join(escape_md(c) for c in classes) + " | held-out-source test |",
              "|---|---|---:|" + "---:|" * len(classes) + "---|"]
    for source, s in result["sources"].items():
        counts = " | ".join(str(s["classes"].get(c, 0)) for c in classes)
        test = MEASURE_TEXT[s["measure"]] if s["held_out"] else f"not possible: {escape_md(s['why_not'])}"
        lines.append(f"| {escape_md(source)} | {', '.join(escape_md(d) for d in s['datasets'])} | {s['images']} "
                     f"| {counts} | {test} |")

    confounding = result["confounding"]
    lines += ["", "## Confounding", "", "| class | sources |", "|---|---|"]
    lines += [f"| {escape_md(c)} | {', '.join(escape_md(s) for s in sources)} |" for c, sources in confounding["classes"].items()]
    if confounding.get("sentence"):
        lines += ["", escape_md(confounding["sentence"])]
    if confounding.get("warning"):
        lines += ["", f"> **Warning.** {escape_md(confounding['warning'])}"]
    if not confounding.get("sentence") and not confounding.get("warning"):
        lines += ["", "Every class comes from more than one source."]

    lines += _identical_section(result["exact_duplicates"], classes, folders)
    lines += _near_section(result["near_duplicates"], result["rule"], classes, folders)
    lines += _conflicts_section(result["label_conflicts"], folders)

    lines += ["", "## Unreadable files", ""]
    if result["unreadable"]:
        lines += ["| file | why |", "|---|---|"]
        lines += [f"| {code_md(path)} | {escape_md(why)} |" for path, why in result["unreadable"].items()]
    else:
        lines.append("Every file decoded.")
    lines.append("")
    return "\n".join(lines)


def _identical_section(exact: dict, classes: list[str], folders: dict) -> list[str]:
    lines = ["", "## Identical images", ""]
    if not exact["groups"]:
        return lines + ["None found: no two files decode to the same pixels."]
    lines += [f"{exact['images']} images in {_n(len(exact['groups']), 'group')} of identical decoded pixels: "
              f"{exact['across']} across datasets, {exact['within']} within one.", ""]
    lines += _elsewhere_table(exact["elsewhere"], "images with an identical copy in another dataset", classes)
    lines += ["| group | images (dataset, label) | across datasets | labels differ |", "|---:|---|---|---|"]
    for k, group in enumerate(exact["groups"][:MAX_TABLE_ROWS]):
        images = "; ".join(_image_md(r, folders) for r in group["images"])
        lines.append(f"| {k + 1} | {images} | {_yes(group['across'])} | {_yes(group['labels_differ'])} |")
    return lines + _more(len(exact["groups"]), "groups")


def _near_section(near: dict, rule: dict, classes: list[str], folders: dict) -> list[str]:
    lines = ["", "## Near-duplicates", "",
             f"The same film resized, re-encoded, cropped or annotated. Rule: detail >= {rule['strong_detail']:g}, or "
             f"detail >= {rule['weak_detail']:g} with layout >= {rule['layout']:g} and phash <= {rule['phash']} "
             f"(candidates: layout >= {rule['candidate_layout']:g} or phash <= {rule['phash']}); pairs of identical "
             "images are listed above, not here.", ""]
    if not near["pairs"]:
        return lines + ["None found."]
    lines += [f"{_n(len(near['pairs']), 'pair')}: {near['across']} across datasets, {near['within']} within one dataset.",
              ""]
    lines += _elsewhere_table(near["elsewhere"], "images with a near-duplicate in another dataset", classes)
    lines += [f"![near-duplicate pairs]({AUDIT_SHEET})", "",
              "| image A (dataset, label) | image B (dataset, label) | phash | layout | detail | across datasets "
              "| labels differ |", "|---|---|---:|---:|---:|---|---|"]
    for p in near["pairs"][:MAX_TABLE_ROWS]:
        lines.append(f"| {_image_md(p['a'], folders)} | {_image_md(p['b'], folders)} | {p['phash']} | {p['layout']:.3f} "
                     f"| {p['detail']:.3f} | {_yes(p['across'])} | {_yes(p['labels_differ'])} |")
    return lines + _more(len(near["pairs"]), "pairs")


def _conflicts_section(conflicts: list[dict], folders: dict) -> list[str]:
    lines = ["", "## Label conflicts", ""]
    if not conflicts:
        return lines + ["None: every identical or near-duplicate pair has one label."]
    lines += ["| kind | image A (dataset, label) | image B (dataset, label) |", "|---|---|---|"]
    lines += [f"| {c['kind']} | {_image_md(c['a'], folders)} | {_image_md(c['b'], folders)} |" for c in conflicts]
    return lines


def _elsewhere_table(elsewhere: dict, what: str, classes: list[str]) -> list[str]:
    if not elsewhere:
        return []
    lines = [f"| dataset | {what} | " + " | ".join(escape_md(c) for c in classes) + " |",
             "|---|---:|" + "---:|" * len(classes)]
    for name, v in elsewhere.items():
        lines.append(f"| {escape_md(name)} | {v['images']} | " + " | ".join(str(v["classes"].get(c, 0)) for c in classes) + " |")
    return lines + [""]


def _classes(result: dict) -> list[str]:
    order = ("covid", "normal", "pneumonia")
    present = {c for d in result["datasets"].values() for c in d["classes"]}
    return [c for c in order if c in present] + sorted(present - set(order))


def _image_md(record: dict, folders: dict) -> str:
    return f"{code_md(_shown_path(record, folders))} ({escape_md(record['dataset'])}, {escape_md(record['label'])})"


def _shown_path(record: dict, folders: dict) -> str:
    """The image's path relative to its dataset's folder, where it lies inside it."""
    folder = folders.get(record["dataset"])
    path = record["path"]
    if folder and os.path.commonpath([os.path.abspath(folder), os.path.abspath(path)]) == os.path.abspath(folder):
        return os.path.relpath(path, folder)
    return path


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _more(count: int, what: str) -> list[str]:
    return [] if count <= MAX_TABLE_ROWS else ["", f"... and {count - MAX_TABLE_ROWS} more {what} in audit.json."]


# The contact sheet.

def plot_near_duplicates(result: dict, max_pairs: int = 40, pairs_per_row: int = 4,
                         load_image: Callable[[str], np.ndarray | None] | None = None) -> Figure | None:
    """The first ``max_pairs`` near-duplicate pairs (in audit.json's order: label conflicts, then across
    datasets from the least certain, then within a dataset) side by side; None without pairs.

    Each image is titled with its dataset, label and file name; above each pair, its scores.
    ``load_image(path)``: a grayscale array, or None where the file cannot be read (default: decode it).
    """
    pairs = result["near_duplicates"]["pairs"]
    if not pairs:
        return None
    load_image = load_image or _thumbnail
    shown = pairs[:max_pairs]
    rows = int(np.ceil(len(shown) / pairs_per_row))
    columns = min(pairs_per_row, len(shown))
    figure = Figure(figsize=(4.2 * columns, 2.8 * rows + 0.4), layout="constrained")
    cells = np.atleast_2d(figure.subfigures(rows, columns, squeeze=False, wspace=0.03))  # one per pair
    for k, pair in enumerate(shown):
        cell = cells[divmod(k, pairs_per_row)]
        color = CONFLICT_COLOR if pair["labels_differ"] else ("black" if pair["across"] else WITHIN_COLOR)
        for side, (axes, record) in enumerate(zip(cell.subplots(1, 2), (pair["a"], pair["b"]), strict=True)):
            _show(axes, load_image(record["path"]))
            axes.set_anchor("E" if side == 0 else "W")  # the two images of a pair side by side
            # the user's names, shown as written: '$...$' in one is not math text (matplotlib would parse it, and fail)
            axes.set_title(f"{record['dataset']}\n{record['label']}\n{_short(Path(record['path']).name)}",
                           fontsize=7, color=color, parse_math=False)
        note = "LABELS DIFFER  " if pair["labels_differ"] else ""
        cell.suptitle(f"{note}detail {pair['detail']:.2f}  layout {pair['layout']:.2f}  phash {pair['phash']}",
                      fontsize=8, color=color, fontweight="bold" if note else "normal")
    conflicts = sum(p["labels_differ"] for p in pairs)
    figure.suptitle(f"Near-duplicate pairs: {len(shown)} of {len(pairs)} shown ({_n(conflicts, 'label conflict')}, in red, "
                    "first; then across datasets, least certain first; then within a dataset, in grey)", fontsize=10)
    return figure


def _show(axes, image: np.ndarray | None) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    if image is None:
        axes.text(0.5, 0.5, "cannot read", ha="center", va="center", fontsize=8, transform=axes.transAxes)
        return
    axes.imshow(image, cmap="gray", vmin=0, vmax=255)
    axes.set_aspect("equal")
    for spine in axes.spines.values():
        spine.set_visible(False)


def _thumbnail(path: str, side: int = 256) -> np.ndarray | None:
    """The image at ``path`` decoded, its longer side at most ``side`` px; None if it does not decode."""
    from PIL import Image

    from covidxray.data.images import read_image
    from covidxray.errors import CovidXrayError

    try:
        image = Image.fromarray(read_image(path))
    except (CovidXrayError, OSError):
        return None
    image.thumbnail((side, side))
    return np.asarray(image)


def _short(name: str, width: int = 24) -> str:
    """``name``, shortened in the middle to ``width`` characters."""
    if len(name) <= width:
        return name
    keep = width - 1
    return name[: keep - keep // 2] + "…" + name[-(keep // 2):]


# Writing the audit folder.

def check_out(out: str | Path, overwrite: bool = False) -> None:
    """Raise, before any work, unless ``out`` is new, empty, an earlier audit, or ``overwrite`` is given."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CovidXrayError(f"{out}: is a file, not a folder; choose another --out")
    if not out.exists():
        check_can_create(out.parent, f"--out {out}")
        return
    if overwrite or (out / AUDIT_JSON).is_file():
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in AUDIT_FILES and not is_temporary(p.name))
    if others:
        listed = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise CovidXrayError(f"{out}: not empty and not an audit folder (holds {listed}); choose a new or empty --out, "
                             "or pass --overwrite to write into it")


def write_audit(result: dict, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``audit.json``, ``audit.md`` (and ``audit.html``) and ``near_duplicates.png`` into ``out``;
    returns the report's path. Nothing else in the folder is touched."""
    out = Path(out)
    check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    sheet = out / AUDIT_SHEET
    if result["near_duplicates"]["pairs"]:
        save_figure(plot_near_duplicates(result), sheet)
    else:
        sheet.unlink(missing_ok=True)  # an earlier audit's sheet would show pairs this one did not find
    write_report(out / AUDIT_REPORT, render_audit_report(result))
    atomic_write_text(out / AUDIT_JSON, json.dumps(result, indent=2) + "\n")  # last: the folder is an audit
    return out / AUDIT_REPORT
