"""covidxray.evaluation.evaluate: a run (or a loaded predictor) scored on a labelled dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidxray.data.loading import load_labelled_images
from covidxray.errors import CovidXrayError, DatasetError
from covidxray.evaluation.evaluate import evaluate
from covidxray.inference.predictor import load_predictor, seen_by_run
from helpers import CLASSES, build_run, make_dataset


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    return build_run(root / "run"), make_dataset(root / "data", per_class=6)


def _mark_split(run, data, train_rows: int):
    """A split.csv naming the first ``train_rows`` images (by their pixels) as the run's training images."""
    table = load_labelled_images(str(data), CLASSES, 32).table
    table["split"] = ["train"] * train_rows + ["test"] * (len(table) - train_rows)
    table.to_csv(run / "split.csv", index=False)
    return table


def test_evaluate_scores_every_image_of_a_run_without_split(run_and_data, tmp_path):
    run, data = run_and_data
    metrics = evaluate(str(run), str(data), cache_dir=tmp_path / "cache")
    assert metrics["n"] == 18 and metrics["left_out_seen"] == 0 and metrics["skipped"] == {}
    assert metrics["data"] == str(data) and metrics["classes"] == list(CLASSES)
    assert np.sum(metrics["confusion_matrix"]) == 18
    assert [c["support"] for c in metrics["per_class"].values()] == [6, 6, 6]
    calibration = metrics["calibration"]  # no calibration.json: the top class, unscaled
    assert calibration["temperature"] == 1.0 and calibration["covid_threshold"] is None
    assert calibration["ece_after"] == pytest.approx(calibration["ece_before"], abs=1e-6)
    assert metrics["confounding"] is None  # one source
    # the predictions are the predictor's own: same accuracy from its raw outputs
    predictor = load_predictor(run)
    loaded = load_labelled_images(str(data), CLASSES, 32)
    expected = np.mean(predictor.predict(loaded.images)[1] == loaded.targets)
    assert metrics["accuracy"] == pytest.approx(expected)
    with pytest.raises(DatasetError, match="source column has one value"):
        evaluate(predictor, str(data), per_source=True)


def _copy_run(run, copy):
    """The run's model and settings in a new folder (whose split.csv the test writes)."""
    copy.mkdir()
    for name in ("config.json", "model.keras"):
        (copy / name).write_bytes((run / name).read_bytes())
    return copy


def test_images_the_run_trained_on_are_left_out(run_and_data, tmp_path):
    run, data = run_and_data
    copy = _copy_run(run, tmp_path / "run")
    table = _mark_split(copy, data, train_rows=12)
    seen = seen_by_run(copy, table)
    assert seen.tolist() == [True] * 12 + [False] * 6
    assert seen_by_run(run, table).tolist() == [False] * 18  # no split.csv: nothing seen
    metrics = evaluate(load_predictor(copy), [str(data)])
    assert metrics["n"] == 6 and metrics["left_out_seen"] == 12 and metrics["data"] == [str(data)]
    assert evaluate(load_predictor(copy), str(data), include_seen=True)["n"] == 18


def test_a_dataset_the_run_saw_whole_is_refused(run_and_data, tmp_path):
    run, data = run_and_data
    copy = _copy_run(run, tmp_path / "run")
    _mark_split(copy, data, train_rows=18)
    with pytest.raises(DatasetError, match="every image was used to train"):
        evaluate(str(copy), str(data))


def test_seen_by_run_matches_original_names_too(tmp_path):
    split = pd.DataFrame({"split": ["train", "validation", "test"], "original_name": ["A.png", "b.jpg", "c.png"],
                          "pixels": ["p1", "p2", "p3"]})
    split.to_csv(tmp_path / "split.csv", index=False)
    table = pd.DataFrame({"original_name": ["a.jpeg", "B.png", "c.png", "d.png", ""], "pixels": ["x", "y", "z", "p2", "p3"]})
    # a and b by name (stem, any case or suffix); c is a test image; d by pixels; p3 was a test image
    assert seen_by_run(tmp_path, table).tolist() == [True, True, False, True, False]


@pytest.mark.parametrize("text, message", [
    ("path,label\nx.png,covid\n", "no 'split' column, so not a covidxray split"),
    ("path,split\nx.png,holdout\n", "unknown split 'holdout'"),
])
def test_a_split_csv_that_is_not_one_is_a_clear_error(tmp_path, text, message):
    (tmp_path / "split.csv").write_text(text)
    table = pd.DataFrame({"original_name": ["a.png"], "pixels": ["x"]})
    with pytest.raises(CovidXrayError, match=message) as raised:
        seen_by_run(tmp_path, table)
    assert str(raised.value).startswith(f"{tmp_path / 'split.csv'}: ")
    assert str(raised.value).endswith("retrain the run, or pass --include-seen to keep every image")


def test_predictions_csv_has_one_row_per_image_as_the_run_decides(run_and_data, tmp_path):
    run, data = run_and_data
    out = tmp_path / "preds" / "p.csv"
    metrics = evaluate(str(run), str(data), cache_dir=tmp_path / "cache", predictions=out)
    rows = pd.read_csv(out, keep_default_na=False)
    assert list(rows.columns) == ["path", "label", "predicted", "source", *CLASSES]
    assert len(rows) == metrics["n"] == 18
    assert sorted(rows["label"].value_counts().to_dict().items()) == [(c, 6) for c in CLASSES]
    assert np.allclose(rows[list(CLASSES)].sum(axis=1), 1.0, atol=1e-4)  # calibrated probabilities
    assert (rows["label"] == rows["predicted"]).mean() == pytest.approx(metrics["accuracy"])
    matrix = pd.crosstab(rows["label"], rows["predicted"]).reindex(index=CLASSES, columns=CLASSES, fill_value=0)
    assert matrix.to_numpy().tolist() == metrics["confusion_matrix"]
    assert set(rows["path"]) == set(load_labelled_images(str(data), CLASSES, 32).table["path"].astype(str))


def test_predictions_csv_that_cannot_be_written_fails_before_the_work(run_and_data, tmp_path, monkeypatch):
    import covidxray.evaluation.evaluate as module

    run, data = run_and_data
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(module, "load_labelled_images", lambda *a, **k: pytest.fail("worked before checking"))
    with pytest.raises(CovidXrayError, match="--predictions"):
        evaluate(str(run), str(data), predictions=tmp_path / "file" / "p.csv")
    with pytest.raises(CovidXrayError, match="is a folder"):
        evaluate(str(run), str(data), predictions=tmp_path)


def test_without_a_run_the_shipped_model_is_evaluated(tmp_path):
    from covidxray.cli import main

    data = make_dataset(tmp_path / "data", per_class=3)
    out, rows = tmp_path / "m.json", tmp_path / "p.csv"
    assert main(["--quiet", "evaluate", "--data", str(data), "--out", str(out), "--predictions", str(rows),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    import json

    assert json.loads(out.read_text())["n"] == len(pd.read_csv(rows)) == 9
    classes = list(load_predictor(None).classes)
    # the shipped model has a familiarity.npz: each row also says whether the X-ray is unlike its training data;
    # and it crops the lungs: each row says where they were not found and the image was used whole
    frame = pd.read_csv(rows)
    assert list(frame.columns)[4:] == [*classes, "unlike_training", "lungs"]
    assert frame["lungs"].notna().all()  # noise has no lungs: every image used whole, and said so


# --- near-duplicates of the run's images ----------------------------------------------------------


def _film(seed: int, size: int = 192) -> np.ndarray:
    """A smooth film-like image (coarse regions and fine texture), large enough to resize and re-encode."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    coarse, fine = gaussian_filter(rng.normal(0, 1, (size, size)), 10), gaussian_filter(rng.normal(0, 1, (size, size)), 1.5)
    image = coarse / coarse.std() + 0.4 * fine / fine.std()
    return ((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)


def _resized(image: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))


@pytest.fixture
def run_with_films(tmp_path):
    """A run folder whose split.csv names three films on disk (train, validation, test), and a table to
    evaluate: copies of each under other names and pixels, an unrelated film, and one known by name."""
    from helpers import write_image

    films = {name: _film(seed) for seed, name in enumerate(("t", "v", "x", "u", "n"))}
    kept = {s: write_image(tmp_path / "runs_data" / f"{n}.png", films[n]) for s, n in
            (("train", "t"), ("validation", "v"), ("test", "x"))}
    write_image(tmp_path / "runs_data" / "n.png", films["n"])
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"path": [str(p) for p in kept.values()] + [str(tmp_path / "runs_data" / "n.png")],
                  "split": [*kept, "train"], "original_name": ["t.png", "v.png", "x.png", "N.png"],
                  "pixels": ["pt", "pv", "px", "pn"]}).to_csv(run / "split.csv", index=False)
    copies = {"t_copy.jpg": _resized(films["t"], 150), "v_copy.png": _resized(films["v"], 256),
              "x_copy.png": _resized(films["x"], 150), "u.png": films["u"], "n_again.png": _resized(films["n"], 100)}
    paths = [str(write_image(tmp_path / "evaluated" / name, image, **({"quality": 70} if name.endswith("jpg") else {})))
             for name, image in copies.items()]
    table = pd.DataFrame({"path": paths, "original_name": ["t_copy.jpg", "v_copy.png", "x_copy.png", "u.png", "n.png"],
                          "pixels": ["a", "b", "c", "d", "e"]})
    return run, table, kept


def test_seen_by_run_leaves_out_near_duplicates_of_training_and_validation_images(run_with_films, tmp_path, caplog):
    import logging

    run, table, _ = run_with_films
    with caplog.at_level(logging.INFO, logger="covidxray.inference.predictor"):
        seen = seen_by_run(run, table, cache_dir=tmp_path / "cache")
    # t and v by near-duplicate; x was a test image; u is unrelated; n by original name (n.png ~ N.png)
    assert seen.tolist() == [True, True, False, False, True]
    assert "2 images are near-duplicates of the run's training or validation images" in [
        r.getMessage() for r in caplog.records]


def test_a_shipped_split_with_paths_under_dataset_folders_is_found_beside_the_data(run_with_films, tmp_path):
    """A preset's split.csv names runs_data/t.png; evaluating data held beside runs_data/ finds its files."""
    run, table, _ = run_with_films
    split = pd.read_csv(run / "split.csv")
    split["path"] = ["runs_data/" + Path(p).name for p in split["path"]]
    split.to_csv(run / "split.csv", index=False)
    elsewhere = tmp_path / "somewhere_else"
    elsewhere.mkdir()
    assert seen_by_run(run, table, cache_dir=tmp_path / "cache", beside=str(tmp_path / "evaluated")).tolist() == [
        True, True, False, False, True]  # as with the run's own absolute paths
    nowhere = seen_by_run(run, table, cache_dir=tmp_path / "cache", beside=[str(elsewhere / "data")])
    assert nowhere.tolist() == [False, False, False, False, True]  # not found there: by name only


def test_seen_by_run_without_the_runs_files_falls_back_to_names_and_pixels(run_with_films, tmp_path, caplog):
    import logging

    run, table, kept = run_with_films
    for path in kept.values():
        path.unlink()
    table.loc[1, "pixels"] = "pv"  # v's copy, now known by its pixels only
    with caplog.at_level(logging.INFO, logger="covidxray.inference.predictor"):
        seen = seen_by_run(run, table, cache_dir=tmp_path / "cache")
    # n.png is still on disk: its resized copy is found by name and would be by near-duplicate too
    assert seen.tolist() == [False, True, False, False, True]
    assert ("2 of the run's 3 training and validation images are not on this machine: their near-duplicates "
            "cannot be found (same names and pixels still are)") in [r.getMessage() for r in caplog.records]


def test_seen_by_run_with_every_file_gone_reads_no_image(run_with_films, tmp_path, monkeypatch):
    from covidxray.data.cache import ImageCache

    run, table, kept = run_with_films
    for path in kept.values():
        path.unlink()
    (tmp_path / "runs_data" / "n.png").unlink()
    monkeypatch.setattr(ImageCache, "load", lambda *a, **k: pytest.fail("decoded without files"))
    assert seen_by_run(run, table, cache_dir=tmp_path / "cache").tolist() == [False, False, False, False, True]


def test_seen_by_run_of_a_near_duplicate_of_the_n_th_training_image_only(run_with_films, tmp_path):
    """Near-duplicates are looked for among the rows not already seen, and mapped back to their rows."""
    run, table, _ = run_with_films
    reordered = table.iloc[[3, 4, 0, 2, 1]].reset_index(drop=True)  # u, n, t, x, v
    assert seen_by_run(run, reordered, cache_dir=tmp_path / "cache").tolist() == [False, True, True, False, True]


def test_evaluate_traces_each_model_once_and_logs_no_retracing(tmp_path, monkeypatch, caplog):
    """72 images, more than one batch (64): the last, smaller batch is padded, so that TensorFlow traces
    the classifier's and the features' predict functions once each, and its "triggered tf.function
    retracing" warning (five traces of Keras's predict code close together: before, the lung
    segmenter, the classifier and the features each traced two batch shapes) is not printed."""
    import json
    import logging

    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function tracing is TensorFlow's")
    from tensorflow.python.eager.polymorphic_function import polymorphic_function as tf_function

    from covidxray.inference.familiarity import fit_familiarity

    run = build_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "lungs": "crop"}))
    data = make_dataset(tmp_path / "data", per_class=24)
    predictor = load_predictor(run)
    inputs = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 1)).astype(np.uint8)
    fit_familiarity(predictor.model, inputs[:20], inputs[20:]).save(run)
    predictor = load_predictor(run)  # a fresh model, now with the run's familiarity
    # TensorFlow counts traces per Python code across all models: a fresh count, whatever ran before
    monkeypatch.setattr(tf_function, "_frequent_tracing_detector_manager", tf_function._FrequentTracingDetectorManager())
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        metrics = evaluate(predictor, str(data), cache_dir=tmp_path / "cache")
    assert metrics["n"] == 72 and "unlike_training" in metrics
    # the lung segmenter keeps two shapes (covidxray.inference.lungs.PAD_TO: a second pass on flagged images)
    assert predictor.model.predict_function.experimental_get_tracing_count() == 1
    assert predictor.feature_model.predict_function.experimental_get_tracing_count() == 1
    assert not [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
