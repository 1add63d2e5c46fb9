"""``--lungs crop``, the lung probes and heat inside the lungs, end to end on real chest X-rays.

A small three-class dataset is copied from ``../shared/data/darkcovidnet`` (real films, so the
shipped lung segmenter finds lungs in most of them), trained for two epochs with ``--lungs crop``,
and then predicted, evaluated, exported and served: every command must crop as training did.
"""

import json
import shutil

import numpy as np
import pytest

from covidxray.cli import main
from helpers import CLASSES, shared_data_dir

PER_CLASS = 8


@pytest.fixture(scope="module")
def xrays(tmp_path_factory):
    """Class folders of real X-rays (the first few of each DarkCovidNet class)."""
    source = shared_data_dir() / "darkcovidnet"
    root = tmp_path_factory.mktemp("lungs-data") / "data"
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for path in sorted((source / label).glob("*.png"))[:PER_CLASS]:
            shutil.copyfile(path, root / label / path.name)
    return root


@pytest.fixture(scope="module")
def cropped_run(xrays, tmp_path_factory):
    root = tmp_path_factory.mktemp("lungs-run")
    run = root / "run"
    code = main(["--quiet", "train", "--data", str(xrays), "--out", str(run), "--lungs", "crop", "--image-size", "64",
                 "--epochs", "2", "--test-fraction", "0.25", "--cache-dir", str(root / "cache")])
    assert code == 0
    return run, root / "cache"


def test_the_setting_is_saved_and_reported(cropped_run):
    run, _ = cropped_run
    assert json.loads((run / "config.json").read_text())["lungs"] == "crop"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["lungs"] == "crop"
    fallback = metrics["run"]["lung_fallback"]
    assert isinstance(fallback, dict) and len(fallback) < 3 * PER_CLASS / 2  # most real films segment
    report = (run / "report.md").read_text()
    assert "**lungs**: every image cropped to the box around both lungs" in report
    if fallback:
        assert f"lungs not found reliably in {len(fallback)} image(s)" in report
    else:
        assert "the lungs were found reliably in every image" in report


def test_heat_inside_the_lungs_is_measured(cropped_run):
    run, _ = cropped_run
    heat = json.loads((run / "metrics.json").read_text())["heat_in_lungs"]
    assert heat["images"] + heat["left_out"] == json.loads((run / "metrics.json").read_text())["test"]["n"]
    assert heat["images"] > 0
    assert 0.0 <= heat["heat"] <= 1.0 and 0.05 < heat["lung_area"] < 0.95
    assert sum(part["images"] for part in heat["per_class"].values()) == heat["images"]
    assert sum(part["images"] for part in heat["per_source"].values()) == heat["images"]
    report = (run / "report.md").read_text()
    assert "## Heat inside the lungs" in report and "lungs' share of the input" in report


def test_predict_crops_as_training_did(cropped_run, xrays, tmp_path, capsys):
    run, _ = cropped_run
    files = sorted((xrays / "normal").glob("*.png"))[:2]
    assert main(["--quiet", "predict", "--run", str(run), *map(str, files), "--format", "json",
                 "--heatmaps", str(tmp_path / "maps")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["lungs"] for r in results] and all(r["lungs"] in ("ok", "no-lung", "one-lung", "implausible-area",
                                                                 "low-confidence") for r in results)
    assert all((tmp_path / "maps" / f"{f.stem}_gradcam.png").is_file() for f in files)

    from covidxray.data.images import decode_resized
    from covidxray.inference.predictor import load_predictor

    predictor = load_predictor(run)
    assert predictor.decode_side == 128  # twice the model's 64 px, so a crop keeps the resolution
    image, digest = decode_resized(files[0], predictor.decode_side)
    inputs = predictor.prepare(image[None], [digest])
    whole = predictor.predict(decode_resized(files[0], 64)[0][None, ..., None])[0]
    cropped = predictor.predict(inputs.images)[0]
    assert results[0]["probabilities"]["normal"] == pytest.approx(float(cropped[0][1]), abs=1e-5)
    if results[0]["lungs"] == "ok":  # the model saw the crop, not the whole film
        assert tuple(inputs.boxes[0]) != (0.0, 0.0, 1.0, 1.0)
        assert not np.allclose(whole, cropped, atol=1e-6)


def test_evaluate_crops_and_measures_heat(cropped_run, xrays, tmp_path, capsys):
    run, cache = cropped_run
    out = tmp_path / "external.json"
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(xrays), "--include-seen", "--heat-in-lungs",
                 "--cache-dir", str(cache), "--out", str(out), "--predictions", str(tmp_path / "p.csv")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 3 * PER_CLASS and "lung_fallback" in metrics
    assert metrics["heat_in_lungs"]["images"] + metrics["heat_in_lungs"]["left_out"] == 3 * PER_CLASS
    assert "of the Grad-CAM heat falls inside the lungs" in printed
    import pandas as pd

    rows = pd.read_csv(tmp_path / "p.csv")
    assert list(rows.columns) == ["path", "label", "predicted", "source", *CLASSES, "unlike_training", "lungs"]
    assert sorted(rows.loc[rows["lungs"] != "ok", "path"]) == sorted(metrics["lung_fallback"])


def test_onnx_export_records_and_applies_the_crop(cropped_run, xrays):
    pytest.importorskip("onnxruntime")
    import onnx

    from covidxray.inference.predictor import load_predictor

    run, _ = cropped_run
    assert main(["--quiet", "export", "--run", str(run), "--format", "onnx"]) == 0
    graph = onnx.load(str(run / "model.onnx"))
    metadata = json.loads({p.key: p.value for p in graph.metadata_props}["covidxray"])
    assert metadata["preprocessing"] == {"lungs": "crop", "decode_side": 128}
    files = sorted((xrays / "covid").glob("*.png"))[:3]
    keras_results, _ = load_predictor(run).predict_files(files)
    onnx_results, _ = load_predictor(run, engine="onnxruntime").predict_files(files)
    for ours, theirs in zip(keras_results, onnx_results):
        assert ours["lungs"] == theirs["lungs"]
        for c in ours["probabilities"]:
            assert ours["probabilities"][c] == pytest.approx(theirs["probabilities"][c], abs=1e-4)


def test_the_web_page_shows_what_the_model_saw(cropped_run, xrays):
    from PIL import Image

    from covidxray.inference.analysis import XrayAnalyzer

    run, _ = cropped_run
    analysis = XrayAnalyzer(run).analyse_file(sorted((xrays / "normal").glob("*.png"))[0])
    assert analysis.lungs in ("ok", "no-lung", "one-lung", "implausible-area", "low-confidence")
    assert analysis.cropped == (analysis.lungs == "ok")
    import io

    heat = np.asarray(Image.open(io.BytesIO(analysis.heatmap_png)))
    assert heat.ndim == 3 and heat.shape[2] == 3
    box = (heat[..., :3] == (255, 0, 255)).all(axis=2).sum()  # heatmaps.BOX_COLOR: the lung crop's box
    assert (box > 100) == analysis.cropped


def test_lung_probe_says_what_survives(xrays, cropped_run, tmp_path, capsys):
    run = tmp_path / "probe"
    reference, _ = cropped_run  # the same data and split settings, nothing blanked
    assert main(["--quiet", "probe", "--data", str(xrays), "--out", str(run), "--region", "lungs", "--image-size", "48",
                 "--epochs", "1", "--test-fraction", "0.25", "--cache-dir", str(tmp_path / "cache"),
                 "--reference", str(reference)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["probe"]["region"] == "lungs" and metrics["run"]["blanking"] == "lungs"
    assert "with the lungs blanked out" in metrics["probe"]["summary"]
    assert "of its margin over guessing survives without the lungs" in metrics["probe"]["summary"]
    assert metrics["probe"]["reference"]["test_images"] == metrics["test"]["n"]
    assert metrics["probe"]["summary"] in printed
    report = (run / "report.md").read_text()
    assert "## Shortcut probe" in report and "the segmented lungs of every image were blanked out" in report


def test_images_without_lungs_are_predicted_whole_with_a_warning(cropped_run, xrays, tmp_path, capsys):
    from helpers import write_dicom, write_png

    run, _ = cropped_run
    blank = write_png(tmp_path / "blank.png", np.full((300, 300), 128, np.uint8))
    thin = write_png(tmp_path / "thin.png", np.arange(300, dtype=np.uint8)[None, :])  # 1 pixel high
    film = sorted((xrays / "normal").glob("*.png"))[0]
    from PIL import Image

    pixels = np.asarray(Image.open(film).convert("L")).astype(np.uint16) * 16
    inverted = write_dicom(tmp_path / "inverted.dcm", 4095 - pixels, photometric="MONOCHROME1")
    assert main(["predict", "--run", str(run), str(blank), str(thin), str(inverted), str(film), "--format", "json"]) == 0
    captured = capsys.readouterr()
    results = {r["path"]: r for r in json.loads(captured.out)}
    assert results[str(blank)]["lungs"] == results[str(thin)]["lungs"] == "no-lung"
    for path in (blank, thin):
        assert f"{path}: lungs not found reliably (no-lung); the whole image was used" in captured.err
    # a MONOCHROME1 DICOM is inverted on reading: the same film, the same lungs and the same answer
    assert results[str(inverted)]["lungs"] == results[str(film)]["lungs"]
    for c, p in results[str(film)]["probabilities"].items():
        assert results[str(inverted)]["probabilities"][c] == pytest.approx(p, abs=0.02)
