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

pytestmark = pytest.mark.slow  # starts a kernel and trains a model (~40 s)

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
    last = notebook.cells[-2]  # the one-image cell
    assert sum("image/png" in o.get("data", {}) for o in last.outputs) == 2  # the X-ray and its heatmap
    assert "predicted" in "".join(o.get("text", "") for o in last.outputs)
    install = notebook.cells[1]
    assert "%pip install" in install.source and install.outputs == []  # skipped: covidxray is importable
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["epochs_run"] == 1 and metrics["run"]["image_size"] == 32
    assert sum(metrics["run"]["images"].values()) == 36  # 12 per class
    assert (run_dir / "report.html").is_file()
