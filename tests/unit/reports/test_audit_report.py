"""covidxray.reports.audit_report: audit.md and the contact sheet from a hand-made audit result."""

from __future__ import annotations

import numpy as np

from covidxray.reports.audit_report import MAX_TABLE_ROWS, _short, plot_near_duplicates, render_audit_report

RULE = {"strong_detail": 0.75, "weak_detail": 0.35, "layout": 0.93, "phash": 6, "candidate_layout": 0.9}


def _image(path: str, dataset: str, label: str) -> dict:
    return {"path": path, "dataset": dataset, "label": label}


def _pair(a: dict, b: dict, detail: float = 0.8, across: bool = True) -> dict:
    return {"a": a, "b": b, "phash": 2, "layout": 0.97, "detail": detail, "across": across,
            "labels_differ": a["label"] != b["label"]}


def _result(pairs: bool = True) -> dict:
    covid = _image("/d/dark/covid/c1.png", "dark", "covid")
    twin = _image("/d/radio/normal/n9.png", "radio", "normal")
    same = [_image("/d/dark/normal/a.png", "dark", "normal"), _image("/d/radio/normal/a.png", "radio", "normal")]
    near = [_pair(covid, twin), _pair(_image("/d/radio/covid/x.png", "radio", "covid"),
                                      _image("/d/radio/covid/y.png", "radio", "covid"), detail=0.9, across=False)]
    return {
        "data": ["data/dark", "data/radio"],
        "datasets": {
            "data/dark": {"name": "dark", "folder": "/d/dark", "images": 6, "classes": {"covid": 2, "normal": 2, "pneumonia": 2},
                          "patients": 4, "without_patient_id": 0, "sources": {"ieee8023": 2, "nih": 4}, "unreadable": 0},
            "data/radio": {"name": "radio", "folder": "/d/radio", "images": 5, "classes": {"covid": 3, "normal": 2},
                           "patients": 0, "without_patient_id": 5, "sources": {"radio|db": 5}, "unreadable": 1},
        },
        "sources": {
            "ieee8023": {"images": 2, "classes": {"covid": 2}, "datasets": ["dark"], "measure": "sensitivity",
                         "held_out": True, "why_not": None},
            "nih": {"images": 4, "classes": {"normal": 2, "pneumonia": 2}, "datasets": ["dark"], "measure": "specificity",
                    "held_out": True, "why_not": None},
            "radio|db": {"images": 5, "classes": {"covid": 3, "normal": 2}, "datasets": ["radio"], "measure": "covid-auc",
                         "held_out": False, "why_not": "the other sources hold no COVID images"},
        },
        "confounding": {"classes": {"covid": ["ieee8023", "radio|db"], "normal": ["nih", "radio|db"], "pneumonia": ["nih"]},
                        "single_source": {"pneumonia": "nih"}, "own_source": {},
                        "sentence": "pneumonia comes only from nih: for it a model can learn the source instead of the disease.",
                        "warning": None},
        "exact_duplicates": {"groups": [{"images": same, "across": True, "labels_differ": False}], "images": 2,
                             "across": 1, "within": 0,
                             "elsewhere": {"dark": {"images": 1, "classes": {"normal": 1}},
                                           "radio": {"images": 1, "classes": {"normal": 1}}}},
        "near_duplicates": {"pairs": near if pairs else [], "within": 1 if pairs else 0, "across": 1 if pairs else 0,
                            "elsewhere": {"dark": {"images": 1, "classes": {"covid": 1}},
                                          "radio": {"images": 1, "classes": {"normal": 1}}} if pairs else {}},
        "label_conflicts": [{"kind": "near-duplicate", "a": covid, "b": twin, "across": True}] if pairs else [],
        "unreadable": {"/d/radio/covid/bad.png": "/d/radio/covid/bad.png: not an image file Pillow can read; replace or remove the file"},
        "rule": RULE,
        "verdict": ["COVID comes from 2 sources (ieee8023, radio|db).", "Second <sentence>."],
        "seconds": 2.345,
    }


def test_report_sections_and_lines():
    report = render_audit_report(_result())
    lines = report.splitlines()
    assert lines[0] == "# covidxray data audit"
    assert "never use it for diagnosis" in report
    assert "- data: `data/dark`, `data/radio`: 11 images" in lines
    assert "- took 2.3 s" in lines
    verdict = lines.index("## Verdict")
    assert lines[verdict + 2: verdict + 4] == ["- COVID comes from 2 sources (ieee8023, radio\\|db).",
                                               "- Second &lt;sentence&gt;."]  # escaped, never raw HTML
    assert "| dataset | images | covid | normal | pneumonia | patients | without patient id | sources | unreadable |" in lines
    assert "| dark (`data/dark`) | 6 | 2 | 2 | 2 | 4 | 0 | ieee8023 (2), nih (4) | 0 |" in lines
    assert "| radio (`data/radio`) | 5 | 3 | 2 | 0 | 0 | 5 | radio\\|db (5) | 1 |" in lines
    assert "| ieee8023 | dark | 2 | 2 | 0 | 0 | COVID sensitivity only (COVID alone) |" in lines
    assert "| nih | dark | 4 | 0 | 2 | 2 | COVID specificity only (no COVID) |" in lines
    assert "| radio\\|db | radio | 5 | 3 | 2 | 0 | not possible: the other sources hold no COVID images |" in lines
    assert "| pneumonia | nih |" in lines and "| covid | ieee8023, radio\\|db |" in lines
    assert "pneumonia comes only from nih: for it a model can learn the source instead of the disease." in lines
    assert "2 images in 1 group of identical decoded pixels: 1 across datasets, 0 within one." in lines
    assert "| 1 | `normal/a.png` (dark, normal); `normal/a.png` (radio, normal) | yes | no |" in lines
    assert "| dark | 1 | 0 | 1 | 0 |" in lines  # identical copies elsewhere, per class
    assert "2 pairs: 1 across datasets, 1 within one dataset." in lines
    assert "![near-duplicate pairs](near_duplicates.png)" in lines
    assert "| `covid/c1.png` (dark, covid) | `normal/n9.png` (radio, normal) | 2 | 0.970 | 0.800 | yes | yes |" in lines
    assert "| `covid/x.png` (radio, covid) | `covid/y.png` (radio, covid) | 2 | 0.970 | 0.900 | no | no |" in lines
    assert "| near-duplicate | `covid/c1.png` (dark, covid) | `normal/n9.png` (radio, normal) |" in lines
    assert ("| `/d/radio/covid/bad.png` | /d/radio/covid/bad.png: not an image file Pillow can read; replace or remove "
            "the file |") in lines
    assert ("The same film resized, re-encoded, cropped or annotated. Rule: detail >= 0.75, or detail >= 0.35 with "
            "layout >= 0.93 and phash <= 6 (candidates: layout >= 0.9 or phash <= 6); pairs of identical images are "
            "listed above, not here.") in lines
    assert report.index("## Verdict") < report.index("## Datasets") < report.index("## Sources") < report.index(
        "## Confounding") < report.index("## Identical images") < report.index("## Near-duplicates") < report.index(
        "## Label conflicts") < report.index("## Unreadable files")


def test_report_without_findings():
    result = _result(pairs=False)
    result["exact_duplicates"] = {"groups": [], "images": 0, "across": 0, "within": 0, "elsewhere": {}}
    result["unreadable"] = {}
    result["confounding"].update(sentence=None, single_source={})
    lines = render_audit_report(result).splitlines()
    assert "None found: no two files decode to the same pixels." in lines
    near = lines.index("## Near-duplicates")
    assert lines[near + 4] == "None found."
    assert not any("near_duplicates.png" in line for line in lines)
    assert "None: every identical or near-duplicate pair has one label." in lines
    assert "Every file decoded." in lines
    assert "Every class comes from more than one source." in lines


def test_long_pair_tables_are_cut_short():
    result = _result()
    pair = result["near_duplicates"]["pairs"][1]
    result["near_duplicates"]["pairs"] = [pair] * (MAX_TABLE_ROWS + 5)
    lines = render_audit_report(result).splitlines()
    assert sum(line.startswith("| `covid/x.png`") for line in lines) == MAX_TABLE_ROWS
    assert "... and 5 more pairs in audit.json." in lines


def test_contact_sheet_shows_each_pair_side_by_side():
    loaded = []

    def load(path):
        loaded.append(path)
        return None if path.endswith("y.png") else np.full((30, 20), 128, np.uint8)

    figure = plot_near_duplicates(_result(), load_image=load)
    assert loaded == ["/d/dark/covid/c1.png", "/d/radio/normal/n9.png", "/d/radio/covid/x.png", "/d/radio/covid/y.png"]
    axes = [a for cell in figure.subfigs for a in cell.axes]
    assert [a.get_title() for a in axes] == ["dark\ncovid\nc1.png", "radio\nnormal\nn9.png", "radio\ncovid\nx.png",
                                             "radio\ncovid\ny.png"]
    assert [cell._suptitle.get_text() for cell in figure.subfigs if cell._suptitle] == [
        "LABELS DIFFER  detail 0.80  layout 0.97  phash 2", "detail 0.90  layout 0.97  phash 2"]
    assert figure._suptitle.get_text().startswith("Near-duplicate pairs: 2 of 2 shown (1 label conflict, in red")
    assert [t.get_text() for t in axes[3].texts] == ["cannot read"]


def test_contact_sheet_shows_at_most_max_pairs_and_none_without_pairs():
    result = _result()
    result["near_duplicates"]["pairs"] = result["near_duplicates"]["pairs"] * 3
    figure = plot_near_duplicates(result, max_pairs=5, load_image=lambda path: np.zeros((8, 8), np.uint8))
    assert sum(len(cell.axes) for cell in figure.subfigs) == 10
    assert figure._suptitle.get_text().startswith("Near-duplicate pairs: 5 of 6 shown")
    assert plot_near_duplicates(_result(pairs=False)) is None


def test_short_names():
    assert _short("COVID-1.png") == "COVID-1.png"
    assert _short("F051E018-DAD1-4506-AD43-BE4CA29E960B.png") == "F051E018-DAD…29E960B.png"  # 24 characters


def test_names_holding_dollar_signs_are_drawn_as_written(tmp_path):
    """Issue 30: a file or folder name holding '$...$' (or a lone '$', or '$\\x$') is not matplotlib math
    text: the contact sheet is saved, and shows the name as it is."""
    from covidxray.reports.markdown import save_figure

    result = _result()
    pair = result["near_duplicates"]["pairs"][0]
    pair["a"] = _image("/d/$\\frac{a}$/covid/x$^{2$.png", "$\\frac{a}$", "covid")
    pair["b"] = _image("/d/radio/normal/$\\notacommand$.png", "radio", "$normal")
    figure = plot_near_duplicates(result, load_image=lambda path: np.zeros((8, 8), np.uint8))
    save_figure(figure, tmp_path / "sheet.png")  # matplotlib parses math text when it draws: it raised here
    assert (tmp_path / "sheet.png").stat().st_size > 0
    titles = [a.get_title() for a in figure.subfigs[0].axes]
    assert titles == ["$\\frac{a}$\ncovid\nx$^{2$.png", "radio\n$normal\n$\\notacommand$.png"]
