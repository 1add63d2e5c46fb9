"""Markdown pieces every report shares: the disclaimer, numbers with their intervals, the
COVID and per-source tables, and writing a report with its HTML twin and its figures.

Every string a user or a data file chose (paths, labels, sources, file names, messages) enters a
report through :func:`escape_md` or :func:`code_md`, so it shows as the characters it is: a source
named ``<img src=x onerror=...>`` is text, not an image that runs a script, and a ``|`` in it does
not open a table cell.
"""

from __future__ import annotations

import html
import re

from covidxray.files import atomic_save, atomic_write_text
from covidxray.inference.preprocess import Preprocessing
from covidxray.reports.html import write_html

DISCLAIMER = (
    "> **For research and teaching only. Not a medical device; never use it for diagnosis.** "
    "Accuracy on one dataset says little about other hospitals, and where each class comes from "
    "its own source (as in the DarkCovidNet data) a model can learn the source instead of the disease."
)


#: Markdown's inline syntax: backslash, code, emphasis, links and images, table cells, headings.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|#])")


def _one_line(value) -> str:
    return " ".join(str(value).splitlines())


def escape_md(value) -> str:
    """``value`` as Markdown text that shows literally, on one line: ``& < >`` as HTML entities
    (no raw HTML), and backslashes before the characters of emphasis, code, links and table
    cells. For every user-provided string that goes into a report."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(_one_line(value), quote=False))


def code_md(value) -> str:
    """``value`` as a Markdown code span (shown literally, in a monospace font), on one line.

    The fence is longer than any run of backticks in ``value``, so the value cannot end it."""
    text = _one_line(value)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if "`" in text else f"{fence}{text}{fence}"


def save_figure(figure, path) -> None:
    atomic_save(path, lambda tmp: figure.savefig(tmp, dpi=110))


def write_report(path, text: str) -> None:
    """Write ``report.md`` and, beside it, ``report.html`` with every figure inlined."""
    atomic_write_text(path, text)
    write_html(path, text)


def source_settings_text(config: dict) -> str | None:
    """The settings meant to make a model hold up on other sources, in words, or None when none is on:
    what the model sees of the lungs, source-balanced weights and the gradient-reversal source head."""
    parts = Preprocessing.from_settings(config).short()
    if config.get("balance_sources"):
        parts.append("source-balanced loss")
    if config.get("source_adversary"):
        parts.append(f"source adversary {config['source_adversary']:g}")
    return ", ".join(parts) or None


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def interval_text(scores: dict, name: str, percent: bool = True) -> str:
    """`` [low-high]`` from a metrics dict's 95% intervals, or nothing."""
    bounds = scores.get("intervals", {}).get(name)
    if bounds is None:
        return ""
    low, high = bounds
    return f" [{100 * low:.1f}-{100 * high:.1f}]" if percent else f" [{low:.3f}-{high:.3f}]"


def risk_coverage_table(curves: dict, first: str = "") -> list[str]:
    """Risk-coverage curves (:func:`covidxray.evaluation.metrics.risk_coverage`), one row each
    (``{row name: curve}``): the error rate when only the surest share of the images is answered."""
    curves = {name: curve for name, curve in curves.items() if curve and curve.get("points")}
    if not curves:
        return []
    coverages = [c for c, _ in next(iter(curves.values()))["points"]]
    lines = [f"| {first} | " + " | ".join(f"{percent(c)} answered" for c in coverages) + " | AURC (best possible) |",
             "|---|" + "---:|" * (len(coverages) + 1)]
    for name, curve in curves.items():
        lines.append(f"| {escape_md(name)} | " + " | ".join(percent(r) for _, r in curve["points"])
                     + f" | {curve['aurc']:.3f} ({curve['aurc_best']:.3f}) |")
    return lines


def covid_row(scores: dict) -> str:
    """Sensitivity, specificity and AUC with counts and 95% intervals, as table cells."""
    covid = scores["covid"]
    auc = "n/a" if covid["auc"] is None else f"{covid['auc']:.3f}{interval_text(scores, 'auc', False)}"
    return (f"{percent(covid['sensitivity'])}{interval_text(scores, 'sensitivity')} ({covid['tp']}/{covid['tp'] + covid['fn']}) "
            f"| {percent(covid['specificity'])}{interval_text(scores, 'specificity')} ({covid['tn']}/{covid['tn'] + covid['fp']}) "
            f"| {auc}")


def source_section(scores: dict, confounding: str | None, heading: str = "### Per source (test)") -> list[str]:
    """The per-source table and the confounding warning, as Markdown lines."""
    lines = []
    if confounding:
        lines += ["", f"> **Warning.** {escape_md(confounding)}"]
    if "per_source" in scores:
        has_covid = "covid" in scores
        lines += ["", heading, "", "| source | images | accuracy [95% CI] |" + (" COVID sensitivity | specificity | AUC |" if has_covid else ""),
                  "|---|---:|---:|" + ("---:|---:|---:|" if has_covid else "")]
        for source, part in scores["per_source"].items():
            row = f"| {escape_md(source)} | {part['n']} | {percent(part['accuracy'])}{interval_text(part, 'accuracy')} |"
            lines.append(row + (f" {covid_row(part)} |" if has_covid else ""))
    return lines
