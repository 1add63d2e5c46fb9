"""``covidxray cv`` and ``covidxray probe`` end to end, on small synthetic datasets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from covidxray.cli import main
from helpers import make_dataset

ARGS = ["--image-size", "32", "--epochs", "4", "--patience", "4", "--seed", "1"]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    data = make_dataset(root / "data", per_class=16, classes=("covid", "normal"))
    out = root / "cv"
    assert main(["--quiet", "cv", "--data", str(data), "--task", "binary", "--folds", "3", "--out", str(out), *ARGS]) == 0
    return data, out


def test_cv_tests_every_image_once_by_a_model_that_never_saw_its_patient(cv_run):
    data, out = cv_run
    result = json.loads((out / "cv.json").read_text())
    assert result["protocol"] == {"folds": 3, "group_by": "patient", "seed": 1, "images": 32, "patients": 16}
    tested = []
    for k in (1, 2, 3):
        split = pd.read_csv(out / f"fold-{k}" / "split.csv")
        test_patients = set(split.loc[split["split"] == "test", "patient_id"])
        assert not test_patients & set(split.loc[split["split"] != "test", "patient_id"])
        assert (split["split"] == "validation").any()
        tested += list(split.loc[split["split"] == "test", "path"])
    assert sorted(tested) == sorted(pd.read_csv(data / "manifest.csv")["path"].map(lambda p: str((data / p).resolve())))
    assert [f["fold"] for f in result["per_fold"]] == [1, 2, 3]
    accuracies = [f["accuracy"] for f in result["per_fold"]]
    assert result["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert result["sd"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    pooled = result["pooled"]
    assert np.sum(pooled["confusion_matrix"]) == 32
    low, high = pooled["intervals"]["accuracy"]
    assert low <= pooled["accuracy"] <= high
    report = (out / "cv.md").read_text()
    assert "mean ± sd" in report and "patient-grouped" in report and "cv_mat.png" in report
    assert (out / "cv_mat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "cv.html").read_text()  # the same report, one self-contained page
    assert "mean ± sd" in page and '<img alt="pooled confusion matrix" src="data:image/png;base64,' in page


def test_cv_reuses_finished_folds_and_refuses_to_overwrite(cv_run, capsys):
    data, out = cv_run
    assert main(["--quiet", "cv", "--data", str(data), "--task", "binary", "--folds", "3", "--out", str(out), *ARGS]) == 2
    assert "--overwrite" in capsys.readouterr().err
    before = (out / "fold-2" / "model.keras").stat().st_mtime_ns
    (out / "cv.json").unlink()  # as if the run had been stopped before the summary
    assert main(["--quiet", "cv", "--data", str(data), "--task", "binary", "--folds", "3", "--out", str(out), *ARGS]) == 0
    assert (out / "fold-2" / "model.keras").stat().st_mtime_ns == before  # not retrained
    assert json.loads((out / "cv.json").read_text())["per_fold"][1]["fold"] == 2


def test_cv_image_level_protocol_is_named(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=12, classes=("covid", "normal"))
    out = tmp_path / "cv"
    assert main(["--quiet", "cv", "--data", str(data), "--task", "binary", "--folds", "2", "--group-by", "none",
                 "--out", str(out), *ARGS[:2], "--epochs", "1"]) == 0
    assert json.loads((out / "cv.json").read_text())["protocol"]["group_by"] == "none"
    assert "image-level" in (out / "cv.md").read_text()


def test_cv_bad_input_is_a_clear_error(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=6, classes=("covid", "normal"))  # 3 patients per class
    assert main(["--quiet", "cv", "--data", str(data), "--task", "binary", "--folds", "5", "--out", str(tmp_path / "o"), *ARGS]) == 2
    assert "class 'covid' has 3 patients, fewer than --folds 5" in capsys.readouterr().err
    single = make_dataset(tmp_path / "single", per_class=6, classes=("covid",))
    assert main(["--quiet", "cv", "--data", str(single), "--task", "binary", "--out", str(tmp_path / "o2"), *ARGS]) == 2
    assert "no images of class normal" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_probe_finds_a_shortcut_in_the_border(tmp_path, capsys):
    """Classes that differ only in a corner marker stay separable with the centre blanked."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    rows = ["path,label,patient_id,source"]
    for label in ("covid", "normal"):
        (root / label).mkdir(parents=True)
        for i in range(24):
            image = rng.integers(60, 140, (48, 48), dtype=np.uint8)
            if label == "covid":
                image[:6, :6] = 255  # the "hospital marker": outside the blanked centre
            Image.fromarray(image).save(root / label / f"{i}.png")
            rows.append(f"{label}/{i}.png,{label},{label}-{i},{'a' if label == 'covid' else 'b'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "probe"
    assert main(["--quiet", "probe", "--data", str(root), "--task", "binary", "--out", str(out),
                 "--image-size", "48", "--epochs", "12", "--patience", "12", "--no-augment"]) == 0
    printed = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["blank_fraction"] == metrics["probe"]["blank_fraction"] == 0.75
    assert metrics["test"]["accuracy"] >= 0.85  # chance is 0.5: the marker gives the class away
    supports = [c["support"] for c in metrics["test"]["per_class"].values()]
    assert metrics["probe"]["chance_accuracy"] == pytest.approx(max(supports) / sum(supports))
    assert "shortcut probe" in printed.out and "Labels are confounded with the source" in printed.err
    report = (out / "report.md").read_text()
    assert "shortcut probe" in report and "confounded" in report and "### Per source (test)" in report
