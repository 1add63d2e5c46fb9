"""notebooks/covid_xray.ipynb runs from top to bottom (tiny settings, real data) and shows the
table, the figures and one prediction with its heatmap."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import covidxray
from helpers import shared_data_dir

pytestmark = pytest.mark.slow  # starts a kernel and trains five small models (a few minutes)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "covid_xray.ipynb"


def test_notebook_runs_with_small_settings(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    run_dir = tmp_path / "run"
    # The kernel imports the covidxray under test (also when it is found through a relative
    # PYTHONPATH, which the kernel's working folder would break), and never installs anything.
    package_root = str(Path(covidxray.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("COVIDXRAY_SOURCE", str(tmp_path / "no-such-source"))
    for name, value in {"COVIDXRAY_EPOCHS": "1", "COVIDXRAY_IMAGE_SIZE": "32", "COVIDXRAY_PER_CLASS": "12",
                        "COVIDXRAY_DATA": str(shared_data_dir() / "darkcovidnet"),
                        "COVIDXRAY_OTHER": str(shared_data_dir()),
                        "COVIDXRAY_RUN_DIR": str(run_dir)}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (run_dir / "report.md").read_text())
    assert "<table>" in html
    assert len(figures) >= 3 and html.count('src="data:image/png;base64,') == len(figures)  # every figure, inline
    assert "never use it for diagnosis" in html
    def cell_after(heading: str):
        index = next(i for i, cell in enumerate(notebook.cells) if cell.source.startswith(heading))
        cell = notebook.cells[index + 1]
        return cell, "".join(o.get("text", "") for o in cell.outputs), sum(
            "image/png" in o.get("data", {}) for o in cell.outputs)

    _, text, images = cell_after("## One X-ray and its heatmap")
    assert images == 2 and "predicted" in text  # the X-ray and its heatmap
    _, text, images = cell_after("## 2. Blank the lungs")
    assert "the lungs blanked out (only the rest of the image visible)" in text and images == 1, text
    _, text, images = cell_after("## 3. A source it never saw")
    assert re.search(r"own test split: accuracy [\d.]+%, COVID AUC [\d.]+", text)
    assert re.search(r"radiography-db: accuracy [\d.]+%, COVID AUC [\d.]+", text) and images == 1
    _, text, images = cell_after("## 4. Why: audit the data")
    assert "COVID comes from 2 sources (ieee8023, radiography-db)" in text
    assert "8 pairs disagree on the label" in text and images == 1  # the contact sheet
    _, text, images = cell_after("## 5. Several sources")
    held_out = re.findall(r"held out (\S+): COVID (auc|sensitivity|specificity) [\d.]+, accuracy", text)
    assert held_out == [("ieee8023", "auc"), ("nih-chestxray8", "specificity"), ("radiography-db", "auc")], text
    assert images == 1  # the five steps' COVID AUC
    assert (tmp_path / "run-story.png").is_file()  # the same figure, saved for the README
    folds = json.loads((tmp_path / "run-sources" / "cv.json").read_text())
    assert folds["config"]["lungs"] == "crop" and folds["config"]["balance_sources"] is True
    install = notebook.cells[1]
    assert "%pip install" in install.source and install.outputs == []  # skipped: covidxray is importable
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["epochs_run"] == 1 and metrics["run"]["image_size"] == 32
    assert sum(metrics["run"]["images"].values()) == 36  # 12 per class
    assert (run_dir / "report.html").is_file()
