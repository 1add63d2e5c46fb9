"""End to end through the command line: train, evaluate, predict, and bad input."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxray.cli import main
from helpers import make_dataset

RUN_FILES = ("model.keras", "config.json", "split.csv", "history.csv", "metrics.json",
             "acc.png", "mat.png", "pred.png", "report.md")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small three-class run on synthetic images, shared by the tests below."""
    root = tmp_path_factory.mktemp("e2e")
    data = make_dataset(root / "data", per_class=20)
    run = root / "run"
    code = main(["--quiet", "train", "--data", str(data), "--task", "three-class", "--out", str(run),
                 "--image-size", "32", "--epochs", "12", "--patience", "12", "--seed", "3",
                 "--cache-dir", str(root / "cache")])
    assert code == 0
    return data, run


def test_train_writes_a_complete_run(trained):
    _, run = trained
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left
    for figure in ("acc.png", "mat.png", "pred.png"):
        assert (run / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["covid", "normal", "pneumonia"] and config["image_size"] == 32
    history = pd.read_csv(run / "history.csv")
    assert {"accuracy", "loss", "val_accuracy", "val_loss"} <= set(history.columns)


def test_metrics_json_has_the_promised_shape(trained):
    _, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    split_sizes = pd.read_csv(run / "split.csv")["split"].value_counts()
    for split in ("train", "validation", "test"):
        matrix = np.array(metrics[split]["confusion_matrix"])
        assert matrix.sum() == metrics[split]["n"] == split_sizes[split] == metrics["run"]["images"][split]
        assert metrics[split]["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())  # the decided classes
        # a wrong (argmax) call gave the true class at most 1/2: at least log 2 of loss each
        assert metrics[split]["loss"] >= (1 - metrics[split]["accuracy"]) * np.log(2) - 1e-9
    test = metrics["test"]
    assert set(test["per_class"]) == {"covid", "normal", "pneumonia"}
    assert {"precision", "recall", "f1"} <= set(test["per_class"]["covid"])
    assert {"sensitivity", "specificity", "auc"} <= set(test["covid"])
    # the synthetic classes are easy: a model that learned anything separates them
    assert metrics["train"]["accuracy"] >= 0.9
    assert metrics["test"]["covid"]["auc"] >= 0.9


def test_split_keeps_patients_together(trained):
    _, run = trained
    split = pd.read_csv(run / "split.csv")
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "validation", "test"}
    for part in ("train", "validation", "test"):
        assert set(split.loc[split["split"] == part, "label"]) == {"covid", "normal", "pneumonia"}


def test_report_shows_every_result(trained):
    _, run = trained
    report = (run / "report.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "never use it for diagnosis" in report
    assert f"{100 * metrics['test']['accuracy']:.1f}%" in report
    for figure in ("acc.png", "mat.png", "pred.png"):
        assert f"]({figure})" in report
    assert "patient-grouped" in report
    assert "sensitivity" in report and "ROC AUC" in report


def test_evaluate_writes_the_test_shape(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "eval.json"
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    split = pd.read_csv(run / "split.csv")
    # images the run trained or validated on are left out: what remains is its test split
    assert result["n"] == (split["split"] == "test").sum() == 60 - result["left_out_seen"]
    assert {"accuracy", "loss", "per_class", "covid", "confusion_matrix", "intervals", "calibration"} <= set(result)
    low, high = result["intervals"]["accuracy"]
    assert 0 <= low <= result["accuracy"] <= high <= 1
    assert "accuracy" in capsys.readouterr().out
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--out", str(out), "--include-seen",
                 "--predictions", str(tmp_path / "predictions.csv"), "--overwrite"]) == 0  # out exists: --overwrite
    assert json.loads(out.read_text())["n"] == 60
    rows = pd.read_csv(tmp_path / "predictions.csv")
    assert len(rows) == 60 and list(rows.columns)[:4] == ["path", "label", "predicted", "source"]
    assert (rows["label"] == rows["predicted"]).mean() == pytest.approx(json.loads(out.read_text())["accuracy"])
    assert json.loads(out.read_text())["tta"] == 1
    augmented = tmp_path / "tta.csv"
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--out", str(out), "--include-seen",
                 "--predictions", str(augmented), "--tta", "3", "--overwrite"]) == 0
    assert json.loads(out.read_text())["tta"] == 3
    views = pd.read_csv(augmented)
    assert list(views["path"]) == list(rows["path"])
    assert np.abs(views[["covid", "normal", "pneumonia"]].to_numpy()
                  - rows[["covid", "normal", "pneumonia"]].to_numpy()).max() > 1e-4  # the views were averaged
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--tta", "0"]) == 2
    assert "--tta must be a whole number of views from 1 (none) to 32; got 0" in capsys.readouterr().err


def test_evaluate_per_source_needs_two_sources(trained, capsys):
    data, run = trained
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--per-source"]) == 2
    err = capsys.readouterr().err
    assert "source column has one value ('synthetic')" in err and "--per-source" in err


def test_predict_formats(trained, capsys):
    data, run = trained
    files = sorted((data / "covid").glob("*.png"))[:3]
    assert main(["--quiet", "predict", "--run", str(run), *map(str, files), "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == [str(f) for f in files]
    for r in results:
        assert set(r["probabilities"]) == {"covid", "normal", "pneumonia"}
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    assert main(["--quiet", "predict", "--run", str(run), str(data / "normal"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 20
    columns = {"path", "label", "p_covid", "p_normal", "p_pneumonia", "seen_in_training", "unlike_training"}
    assert columns <= set(rows[0]) <= columns | {"near_tie"}  # near_tie only where the top two are within 10%
    assert {row["unlike_training"] for row in rows} <= {"True", "False"}  # the run's familiarity flag
    split = {row["path"]: row["split"] for row in csv.DictReader(io.StringIO((run / "split.csv").read_text()))}
    assert [row["seen_in_training"] for row in rows] == [str(split[row["path"]] != "test") for row in rows]
    assert main(["--quiet", "predict", "--run", str(run), *map(str, files), "--format", "json", "--tta", "3"]) == 0
    augmented = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in augmented] == [str(f) for f in files]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in augmented)
    assert max(abs(a["probabilities"]["covid"] - r["probabilities"]["covid"]) for a, r in zip(augmented, results)) > 1e-4
    assert main(["--quiet", "predict", "--run", str(run), str(files[0])]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [c for c in table[0].split() if c != "near_tie"] == ["path", "label", "p_covid", "p_normal", "p_pneumonia",
                                                                "seen_in_training", "unlike_training"]
    assert len(table) == 2
    assert "never for diagnosis" not in capsys.readouterr().err  # --quiet: no notice
    assert main(["predict", "--run", str(run), str(files[0])]) == 0
    assert "For research and teaching only; never for diagnosis or to guide care" in capsys.readouterr().err


def test_predict_skips_a_bad_file_and_names_it(trained, tmp_path, capsys):
    data, run = trained
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    good = sorted((data / "normal").glob("*.png"))[0]
    assert main(["--quiet", "predict", "--run", str(run), str(good), str(fake), "--format", "json"]) == 1
    captured = capsys.readouterr()
    assert [r["path"] for r in json.loads(captured.out)] == [str(good)]
    assert str(fake) in captured.err and "Traceback" not in captured.err


def test_predict_writes_heatmaps(trained, tmp_path, capsys):
    data, run = trained
    files = sorted((data / "covid").glob("*.png"))[:2]
    twin = tmp_path / "other" / files[0].name  # same file name in another folder
    twin.parent.mkdir()
    twin.write_bytes(files[0].read_bytes())
    out = tmp_path / "maps" / "nested"
    assert main(["--quiet", "predict", "--run", str(run), *map(str, files), str(twin), "--format", "json",
                 "--heatmaps", str(out)]) == 0
    results = json.loads(capsys.readouterr().out)
    written = [Path(r["heatmap"]) for r in results]
    assert len(set(written)) == 3 and {p.parent for p in written} == {out}
    assert written[0].name == f"{files[0].stem}_gradcam.png" and written[2].name == f"{files[0].stem}_gradcam_2.png"
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size[0] >= 400  # a figure around the film
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temporary files left
    assert main(["--quiet", "predict", "--run", str(run), str(files[0]), "--format", "csv", "--heatmaps", str(out)]) == 2
    assert "_gradcam.png: exists; pass --overwrite to replace it" in capsys.readouterr().err  # issue 30
    assert main(["--quiet", "predict", "--run", str(run), str(files[0]), "--format", "csv", "--heatmaps", str(out),
                 "--overwrite"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["heatmap"] == str(written[0])


def test_predict_heatmaps_into_a_file_is_refused(trained, tmp_path, capsys):
    data, run = trained
    target = tmp_path / "maps.png"
    target.write_text("keep me")
    image = sorted((data / "covid").glob("*.png"))[0]
    assert main(["--quiet", "predict", "--run", str(run), str(image), "--heatmaps", str(target)]) == 2
    error = capsys.readouterr().err
    assert str(target) in error and "not a folder" in error and "Traceback" not in error
    assert target.read_text() == "keep me"


def test_a_finished_run_is_not_overwritten(trained, capsys):
    data, run = trained
    before = (run / "model.keras").stat().st_mtime_ns
    code = main(["--quiet", "train", "--data", str(data), "--out", str(run), "--image-size", "32", "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(run) in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (run / "model.keras").stat().st_mtime_ns == before


def test_binary_task_and_a_broken_image(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=10)
    broken = data / "normal" / "normal_000.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated
    run = tmp_path / "run"
    code = main(["--quiet", "train", "--data", str(data), "--task", "binary", "--out", str(run),
                 "--image-size", "32", "--epochs", "2"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]["per_class"]) == {"covid", "normal"}
    assert list(metrics["run"]["skipped"]) == [str(broken.resolve())]
    split = pd.read_csv(run / "split.csv")
    assert "pneumonia" not in set(split["label"]) and str(broken.resolve()) not in set(split["path"])


@pytest.mark.parametrize(
    "setup, args, expected",
    [
        (lambda d: None, lambda d: ["train", "--data", str(d / "missing"), "--out", str(d / "r")], "missing"),
        (lambda d: (d / "data" / "tumour").mkdir(parents=True),
         lambda d: ["train", "--data", str(d / "data"), "--out", str(d / "r")], "tumour"),
        (lambda d: (d / "data" / "covid").mkdir(parents=True),
         lambda d: ["train", "--data", str(d / "data"), "--out", str(d / "r")], "empty class folder"),
        (lambda d: (d / "data.csv").write_text("path,label\nx.png,covid\n"),
         lambda d: ["train", "--data", str(d / "data.csv"), "--out", str(d / "r")], "x.png"),
        (lambda d: ((d / "notarun").mkdir(), Image.new("L", (8, 8)).save(d / "x.png")),
         lambda d: ["predict", "--run", str(d / "notarun"), str(d / "x.png")], "config.json"),
        (lambda d: None, lambda d: ["predict", "--run", str(d), str(d / "nothing.png")], "nothing.png"),
        (lambda d: None, lambda d: ["train", "--data", str(d), "--out", str(d / "r"), "--test-fraction", "0.9"],
         "--test-fraction"),
        (lambda d: None, lambda d: ["train", "--data", str(d), "--out", str(d / "r"), "--image-size", "8"],
         "--image-size"),
        (lambda d: (d / "file").write_text(""), lambda d: ["train", "--data", str(d), "--out", str(d / "file")],
         "is a file"),
        (lambda d: None, lambda d: ["data", "download", "darkcovidnet", "--dest", str(d / "r"), "--url", "example.org/x.zip"],
         "http"),
    ],
    ids=["missing-data", "unknown-label", "empty-class", "manifest-missing-file", "not-a-run", "missing-image",
         "bad-option", "bad-image-size", "out-is-a-file", "url-without-scheme"],
)
def test_user_mistakes_are_one_clear_line(tmp_path, capsys, setup, args, expected):
    setup(tmp_path)
    assert main(["--quiet", *args(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("covidxray: error:") and expected in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # a failed train leaves no half-made run behind


def test_a_class_with_one_image_is_refused(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=8, manifest=False)
    for extra in sorted((data / "covid").glob("*.png"))[1:]:
        extra.unlink()
    assert main(["--quiet", "train", "--data", str(data), "--out", str(tmp_path / "r"), "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "'covid'" in err and "1 image" in err
    assert not Path(tmp_path / "r" / "model.keras").exists()


def test_download_errors_are_one_clear_line(tmp_path, capsys):
    import socket

    with socket.socket() as probe:  # a local port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/master.zip"
    assert main(["--quiet", "data", "download", "darkcovidnet", "--dest", str(tmp_path), "--url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert url in err and len(err.splitlines()) == 1
    assert main(["--quiet", "data", "download", "nosuchdata", "--dest", str(tmp_path)]) == 2
    assert "darkcovidnet" in capsys.readouterr().err


def test_an_interrupted_run_keeps_what_it_wrote(tmp_path, monkeypatch, capsys):
    import covidxray.training.train

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    data = make_dataset(tmp_path / "data", per_class=10)
    run = tmp_path / "run"
    monkeypatch.setattr(covidxray.training.train, "evaluate_splits", interrupt)  # stop right after fitting
    code = main(["--quiet", "train", "--data", str(data), "--out", str(run), "--image-size", "32", "--epochs", "2"])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    for name in ("model.keras", "config.json", "split.csv", "history.csv"):
        assert (run / name).is_file(), name
    assert not (run / "metrics.json").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    image = sorted((data / "covid").glob("*.png"))[0]
    assert main(["--quiet", "predict", "--run", str(run), str(image), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(image)


def test_a_corrupt_model_file_is_a_clear_error(trained, tmp_path, capsys):
    import shutil

    data, run = trained
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.keras").write_bytes(b"not a keras archive")
    image = sorted((data / "covid").glob("*.png"))[0]
    assert main(["--quiet", "predict", "--run", str(broken), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(broken / "model.keras") in err and "retrain" in err and len(err.splitlines()) == 1


def test_combined_data_and_target_sensitivity(tmp_path, capsys):
    """Two datasets in one run (a shared original counted once); the COVID threshold chosen on validation."""
    first = make_dataset(tmp_path / "first", per_class=12)
    second = make_dataset(tmp_path / "second", per_class=8, seed=5)
    for root, suffix, source in ((first, "a", "synthetic"), (second, "b", "other")):
        table = pd.read_csv(root / "manifest.csv")
        table["source"] = source
        table["original_name"] = [Path(p).stem + f"-{suffix}.jpg" for p in table["path"]]
        if root == second:  # the same original as first's covid_000, under another file name and pixels
            table.loc[table["path"] == "covid/covid_000.png", "original_name"] = "COVID_000-a.png"
        table.to_csv(root / "manifest.csv", index=False)
    # the same pixels as first's covid_001, under another original name
    (second / "covid" / "covid_001.png").write_bytes((first / "covid" / "covid_001.png").read_bytes())
    run = tmp_path / "run"
    assert main(["--quiet", "train", "--data", str(first), "--data", str(second), "--out", str(run), "--image-size", "32",
                 "--epochs", "3", "--target-sensitivity", "1.0"]) == 0
    split = pd.read_csv(run / "split.csv")
    assert len(split) == 36 + 24 - 2  # one shared original name, one shared picture: each counted once
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["sources"] == {"synthetic": 36, "other": 22}
    assert set(metrics["test"]["per_source"]) == {"synthetic", "other"}
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["target_sensitivity"] == 1.0 and 0 <= calibration["covid_threshold"] <= 1
    assert calibration["temperature"] > 0
    validation = split["split"] == "validation"
    # a sensitivity of 1: the threshold is the lowest calibrated COVID probability of a validation COVID image
    from covidxray.data.images import decode_resized
    from covidxray.inference.predictor import load_predictor

    predictor = load_predictor(run)
    covid_paths = split.loc[validation & (split["label"] == "covid"), "path"]
    images = np.stack([decode_resized(p, 32)[0] for p in covid_paths])[..., None]
    lowest = predictor.predict(images)[0][:, predictor.classes.index("covid")].min()
    assert calibration["covid_threshold"] == pytest.approx(lowest, abs=1e-5)
    assert metrics["validation"]["covid"]["sensitivity"] == 1.0  # the target, met where it was chosen
    assert metrics["calibration"]["validation"]["ece_after"] <= metrics["calibration"]["validation"]["ece_before"] + 1e-9
    assert validation.any()
    capsys.readouterr()
    files = sorted((first / "normal").glob("*.png"))[:6]
    assert main(["--quiet", "predict", "--run", str(run), *map(str, files), "--format", "json"]) == 0
    for result in json.loads(capsys.readouterr().out):
        called_covid = result["probabilities"]["covid"] >= calibration["covid_threshold"]
        assert (result["label"] == "covid") == called_covid
    report = (run / "report.md").read_text()
    assert "## Calibration" in report and "calibration.png" in report and "chosen on the validation split" in report


def test_predict_without_run_uses_the_shipped_model(tmp_path, capsys):
    from covidxray.inference.predictor import load_predictor
    from covidxray.presets import DEFAULT_PRESET

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        path = tmp_path / f"x{i}.png"
        Image.fromarray(rng.integers(0, 256, (200, 180), dtype=np.uint8)).save(path)
        paths.append(str(path))
    assert main(["--quiet", "predict", *paths, "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == paths
    for r in results:
        assert set(r["probabilities"]) == {"covid", "normal", "pneumonia"}
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert results == load_predictor(preset=DEFAULT_PRESET).predict_files(paths)[0]
    assert main(["--quiet", "predict", "--preset", DEFAULT_PRESET, *paths, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == results


def test_cli_refuses_data_parallel_off_jax_before_writing(tmp_path, monkeypatch, capsys):
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    data = make_dataset(tmp_path / "data", per_class=4)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--devices", "2"])
    assert code == 2
    assert "needs the JAX backend, not tensorflow; run with KERAS_BACKEND=jax" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_evaluate_out_that_cannot_be_written_fails_before_the_work(trained, tmp_path, capsys, monkeypatch):
    import covidxray.evaluation.evaluate as ev

    data, run = trained
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(ev, "load_labelled_images", lambda *a, **k: pytest.fail("worked before checking --out"))
    assert main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--out",
                 str(tmp_path / "file" / "m.json")]) == 2
    assert "file is a file, not a folder" in capsys.readouterr().err
