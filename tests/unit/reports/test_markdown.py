"""covidxray.reports.markdown: the pieces every report shares."""

from __future__ import annotations

import html
import re

from matplotlib.figure import Figure

from covidxray.reports.markdown import (
    DISCLAIMER,
    covid_row,
    interval_text,
    percent,
    save_figure,
    source_section,
    write_report,
)

SCORES = {
    "n": 10, "accuracy": 0.8,
    "covid": {"sensitivity": 0.75, "specificity": 5 / 6, "auc": 0.9125, "tp": 3, "fn": 1, "tn": 5, "fp": 1},
    "intervals": {"accuracy": [0.6, 0.95], "sensitivity": [0.5, 1.0], "auc": [0.8, 0.99]},
}


def test_disclaimer_says_never_for_diagnosis():
    assert DISCLAIMER.startswith("> ") and "never use it for diagnosis" in DISCLAIMER


def test_percent_and_intervals():
    assert percent(0.8123) == "81.2%" and percent(None) == "n/a" and percent(1) == "100.0%"
    assert interval_text(SCORES, "accuracy") == " [60.0-95.0]"
    assert interval_text(SCORES, "auc", percent=False) == " [0.800-0.990]"
    assert interval_text(SCORES, "specificity") == "" and interval_text({}, "accuracy") == ""


def test_covid_row_has_counts_and_intervals():
    assert covid_row(SCORES) == "75.0% [50.0-100.0] (3/4) | 83.3% (5/6) | 0.912 [0.800-0.990]"
    no_auc = {**SCORES, "covid": {**SCORES["covid"], "auc": None, "sensitivity": None}}
    assert covid_row(no_auc) == "n/a [50.0-100.0] (3/4) | 83.3% (5/6) | n/a"


def test_source_section():
    assert source_section(SCORES, None) == []
    with_sources = {**SCORES, "per_source": {"a": {**SCORES, "n": 6}, "b": {"n": 4, "accuracy": 0.5, "covid": SCORES["covid"]}}}
    lines = source_section(with_sources, "every covid image comes from a.", heading="### By hospital")
    assert lines[:2] == ["", "> **Warning.** every covid image comes from a."]
    assert "### By hospital" in lines
    assert "| a | 6 | 80.0% [60.0-95.0] | 75.0% [50.0-100.0] (3/4) | 83.3% (5/6) | 0.912 [0.800-0.990] |" in lines
    assert lines[-1].startswith("| b | 4 | 50.0% |")
    without_covid = {"per_source": {"a": {"n": 2, "accuracy": 1.0}}}
    assert source_section(without_covid, None)[-1] == "| a | 2 | 100.0% |"
    assert "COVID sensitivity" not in source_section(without_covid, None)[3]


def test_write_report_and_save_figure(tmp_path):
    figure = Figure()
    figure.subplots().plot([0, 1], [1, 0])
    save_figure(figure, tmp_path / "f.png")
    write_report(tmp_path / "r.md", "# title\n\n![f](f.png)\n")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "r.md").read_text() == "# title\n\n![f](f.png)\n"
    assert 'src="data:image/png;base64,' in (tmp_path / "r.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "r.html", "r.md"]  # nothing temporary left


HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


def test_escape_md_shows_user_strings_literally():
    from covidxray.reports.html import render_body
    from covidxray.reports.markdown import escape_md

    assert escape_md(HOSTILE) == "&lt;img src=x onerror=\"document.title='pwned'\"&gt;"
    assert escape_md("a|b *c* _d_ [e](f) `g` \\ #h &amp;") == "a\\|b \\*c\\* \\_d\\_ \\[e\\](f) \\`g\\` \\\\ \\#h &amp;amp;"
    assert escape_md("two\nlines\r\n<b>") == "two lines &lt;b&gt;" and escape_md(3) == "3"
    # in a table cell: the value is the cell's text, character for character, and one cell
    for value in (HOSTILE, "a|b", "*c* _d_ [e](javascript:f) `g` \\ & &lt;"):
        body = render_body(f"| source | n |\n|---|---|\n| {escape_md(value)} | 1 |\n", ".")
        cells = re.findall(r"<td>(.*?)</td>", body)
        assert [html.unescape(c) for c in cells] == [value, "1"], body
        assert "<img" not in body and "<a " not in body and "<em>" not in body and "<code>" not in body


def test_code_md_cannot_be_ended_by_its_value():
    from covidxray.reports.html import render_body
    from covidxray.reports.markdown import code_md

    assert code_md("data/x.csv") == "`data/x.csv`"
    for value in ("data/x.csv", HOSTILE, "a`b``c", "`", "C:\\data\\", "*x* | [y](z) &lt;"):
        body = render_body(f"- data: {code_md(value)}; more", ".")
        assert [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", body)] == [value], body
        assert body.endswith("; more</li>\n</ul>") and "<img" not in body


def test_source_section_escapes_sources_and_the_warning():
    hostile = {"per_source": {HOSTILE: {"n": 2, "accuracy": 1.0}, "a|b": {"n": 1, "accuracy": 0.0}}}
    lines = source_section(hostile, f"every covid image comes from {HOSTILE}")
    assert "<img" not in "\n".join(lines)
    assert "| &lt;img src=x onerror=\"document.title='pwned'\"&gt; | 2 | 100.0% |" in lines
    assert "| a\\|b | 1 | 0.0% |" in lines
    assert lines[1] == "> **Warning.** every covid image comes from &lt;img src=x onerror=\"document.title='pwned'\"&gt;"
