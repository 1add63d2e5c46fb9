"""covidxray.inference.predict: arrays, files and folders to probabilities; heatmap file names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidxray.data.images import read_image, resize_square
from covidxray.errors import CovidXrayError
from covidxray.inference.engines import (
    KerasEngine,
    OnnxEngine,
    device_count,
    padded_batches,
    predict_arrays,
    predict_augmented,
)
from covidxray.inference.predict import expand_paths, heatmap_folder, heatmap_names, predict_files
from covidxray.inference.predictor import load_predictor
from helpers import build_run, gray, write_dicom, write_png


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return load_predictor(build_run(tmp_path_factory.mktemp("predict") / "run"))


def test_heatmap_names_are_unique():
    names = heatmap_names(["a/x.png", "b/x.png", "c/x.dcm", "d/X.png", "y.jpeg"])
    assert names == ["x_gradcam.png", "x_gradcam_2.png", "x_gradcam_3.png", "X_gradcam_4.png", "y_gradcam.png"]


def test_expand_paths_finds_images_in_folders_sorted(tmp_path):
    for name in ("b.png", "a.jpg", "sub/c.dcm", ".hidden.png", "notes.txt"):
        (tmp_path / "folder" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / name).write_bytes(b"x")
    single = tmp_path / "single.txt"  # a file named on its own is kept whatever its suffix
    single.write_text("x")
    found = expand_paths([tmp_path / "folder", single])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["folder/a.jpg", "folder/b.png", "folder/sub/c.dcm",
                                                                   "single.txt"]
    with pytest.raises(CovidXrayError, match="nothing.png: no such file or folder"):
        expand_paths([tmp_path / "nothing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CovidXrayError, match="no image files in"):
        expand_paths([tmp_path / "empty"])


def test_heatmap_folder_is_made_and_a_file_refused(tmp_path):
    assert heatmap_folder(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("keep")
    with pytest.raises(CovidXrayError, match="is a file, not a folder"):
        heatmap_folder(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep"


def test_device_count_without_a_distribution():
    assert device_count(None) == 1


def test_predict_arrays_in_chunks_equals_one_call(predictor, monkeypatch):
    import covidxray.inference.engines as engines

    images = np.stack([gray(i, (32, 32)) for i in range(7)])[..., None]
    whole = predict_arrays(predictor.model, images)
    assert whole.shape == (7, 3) and whole.dtype == np.float32
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=1e-5)
    monkeypatch.setattr(engines, "PREDICT_CHUNK", 3)  # 3 + 3 + 1 images
    np.testing.assert_allclose(predict_arrays(predictor.model, images, batch_size=2), whole, atol=1e-6)
    assert predict_arrays(predictor.model, images[:0]).shape == (0, 3)


def test_padded_batches_give_one_shape_and_the_rows_to_keep():
    images = np.arange(7 * 2).reshape(7, 2).astype(np.uint8) + 1
    batches = list(padded_batches(images, 3))
    assert [(b.shape, c) for b, c in batches] == [((3, 2), 3), ((3, 2), 3), ((3, 2), 1)]
    np.testing.assert_array_equal(np.concatenate([b[:c] for b, c in batches]), images)
    assert not batches[-1][0][1:].any() and batches[-1][0].dtype == np.uint8  # zeros, the images' dtype
    assert [b.shape[0] for b, _ in padded_batches(images, 3, pad=False)] == [3, 3, 1]
    assert [b.shape[0] for b, _ in padded_batches(images[:5], 8, multiple=4)] == [8]
    assert [b.shape[0] for b, _ in padded_batches(images[:3], 8, multiple=4)] == [4]


def test_predict_arrays_pads_the_last_batch_unless_told_not_to(tmp_path):
    """More than one batch: the last one is padded (one batch shape, one trace), except with pad=False
    (a caller that predicts the same images every epoch traces the second shape once instead)."""
    import keras

    from covidxray.models import load_model

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function tracing is TensorFlow's")
    run = build_run(tmp_path / "run")
    images = np.stack([gray(i, (32, 32)) for i in range(10)])[..., None]
    counts = []
    for pad in (True, False):
        model = load_model(run / "model.keras")  # a fresh predict function
        result = predict_arrays(model, images, batch_size=4, pad=pad)  # 4 + 4 + 2 images
        counts.append(model.predict_function.experimental_get_tracing_count())
        np.testing.assert_allclose(result, predict_arrays(model, images, batch_size=16), atol=1e-6)  # one batch
    assert counts == [1, 2]


def test_predict_augmented_averages_the_image_and_seeded_draws_of_the_training_augmentation(predictor):
    model = predictor.model
    images = np.stack([gray(i, (32, 32)) for i in range(5)])[..., None]
    plain = predict_arrays(model, images)
    np.testing.assert_array_equal(predict_augmented(model, images, 1), plain)
    before = [np.asarray(v).copy() for v in model.get_layer("augmentation").variables]  # seed states
    four = predict_augmented(model, images, 4, seed=3)
    assert four.shape == (5, 3) and four.dtype == np.float32
    np.testing.assert_allclose(four.sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(four - plain).max() > 1e-4  # the drawn views moved the probabilities
    np.testing.assert_allclose(predict_augmented(model, images, 4, seed=3), four, atol=1e-6)  # same seed, same views
    assert np.abs(predict_augmented(model, images, 4, seed=4) - four).max() > 1e-6
    after = [np.asarray(v) for v in model.get_layer("augmentation").variables]
    assert len(before) == 2 and all(np.array_equal(a, b) for a, b in zip(before, after))  # the model's own seed state is untouched
    assert predict_augmented(model, images[:0], 4).shape == (0, 3)
    for views in (0, 33):  # 1000 views of one image took 56 s (issue 30): at most MAX_TTA
        with pytest.raises(CovidXrayError, match=rf"--tta must be a whole number of views from 1 \(none\) to 32; got {views}"):
            predict_augmented(model, images, views)


def test_predict_augmented_needs_the_models_augmentation_layer(tmp_path):
    from covidxray.models import create_model

    model = create_model("compactnet", num_classes=2, image_size=32, augment=False)
    images = np.stack([gray(i, (32, 32)) for i in range(2)])[..., None]
    assert predict_augmented(model, images, 1).shape == (2, 2)
    with pytest.raises(CovidXrayError, match="no augmentation layer .*--no-augment.*use --tta 1"):
        predict_augmented(model, images, 2)


def test_predict_files_results_failures_and_heatmaps(predictor, tmp_path):
    files = [write_png(tmp_path / "in" / f"x{i}.png", gray(i, (40, 50))) for i in range(3)]
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a png")
    results, failures = predict_files(predictor, [*files, broken], heatmaps=tmp_path / "maps")
    assert [r["path"] for r in results] == [str(f) for f in files]
    assert list(failures) == [str(broken)] and "not an image file" in failures[str(broken)]
    # the one decode step (resized to the run's 32 px), then the predictor's own rule
    images = np.stack([resize_square(read_image(f), 32) for f in files])[..., None]
    probabilities, decided = predictor.predict(images)
    for result, row, label in zip(results, probabilities, decided):
        assert list(result["probabilities"]) == list(predictor.classes)
        assert list(result["probabilities"].values()) == pytest.approx(row.tolist(), abs=1e-6)
        assert result["label"] == predictor.classes[label]
        with Image.open(result["heatmap"]) as heatmap:  # a figure around the whole film (40 x 50 px), not the input
            assert heatmap.size[0] > 300 and heatmap.size[1] > 250 and heatmap.mode == "RGB"
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["x0_gradcam.png", "x1_gradcam.png", "x2_gradcam.png"]
    json.dumps(results)  # plain JSON types


def test_heatmap_files_show_the_whole_film_with_the_class_and_its_flags(predictor, tmp_path, monkeypatch):
    import covidxray.inference.heatmaps as heatmaps

    drawn = []
    real = heatmaps.heatmap_figure
    monkeypatch.setattr(heatmaps, "heatmap_figure", lambda picture, *a, **k: drawn.append((picture.shape, k)) or real(picture, *a, **k))
    wide = write_png(tmp_path / "wide.png", gray(1, (600, 1200)))
    results, _ = predict_files(predictor, [wide], heatmaps=tmp_path / "maps")
    (shape, options), = drawn
    assert shape == (256, 512)  # the whole film, aspect kept, 512 px on its long side
    label = results[0]["label"]
    assert options["label"] == label and options["probability"] == pytest.approx(results[0]["probabilities"][label], abs=1e-6)
    assert options["name"] == "wide.png" and options["crop"] is False  # this run does not crop the lungs
    assert options["note"] == ("near tie" if results[0]["near_tie"] else None)


def test_predict_files_decides_with_the_runs_calibration(predictor, tmp_path):
    from dataclasses import replace

    from covidxray.inference.decision import Calibration

    files = [write_png(tmp_path / f"x{i}.png", gray(10 + i, (32, 32))) for i in range(4)]
    covid_always = replace(predictor, calibration=Calibration(covid_threshold=0.0))
    results, _ = predict_files(covid_always, files)
    assert [r["label"] for r in results] == ["covid"] * 4
    plain, _ = predict_files(predictor, files)
    assert [r["probabilities"] for r in plain] == [r["probabilities"] for r in results]  # T = 1 in both
    missing = tmp_path / "none.png"
    results, failures = predict_files(predictor, [missing])
    assert results == [] and "no such file" in failures[str(missing)]


DICOM_RAMP = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)  # 12-bit values 0..4080


def test_predict_reads_dicom(tmp_path):
    import keras

    from covidxray.config import TrainConfig
    from covidxray.inference.decision import Calibration
    from covidxray.inference.predictor import Predictor

    inputs = keras.Input((16, 16, 1))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    good = write_dicom(tmp_path / "x.dcm", DICOM_RAMP)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"DICM but not really" * 20)
    config = TrainConfig(data="x", image_size=16)
    predictor = Predictor(KerasEngine(model), config, Calibration(), tmp_path)
    results, failures = predict_files(predictor, [good, bad])
    assert [r["path"] for r in results] == [str(good)]
    assert abs(sum(results[0]["probabilities"].values()) - 1) < 1e-4
    assert list(failures) == [str(bad)] and str(bad) in failures[str(bad)]


def test_onnxruntime_output_has_an_empty_unlike_training_column_where_the_run_can_tell(predictor, tmp_path, caplog):
    """Issue 30: the column was missing without a word; now it is there, empty, and the log says why."""
    from dataclasses import replace

    from covidxray.cli.output import format_predictions

    run = tmp_path / "run"
    run.mkdir()
    (run / "familiarity.npz").write_bytes(b"the run has one")  # only its presence is looked at
    onnx_like = replace(predictor, engine=OnnxEngine(predictor.model), path=run)  # the Keras model stands in for the ONNX one
    files = [write_png(tmp_path / "x.png", gray(3, (32, 32)))]
    with caplog.at_level("INFO", logger="covidxray"):
        results, _ = predict_files(onnx_like, files)
    assert results[0]["unlike_training"] is None
    assert any("unlike_training is left empty (use --engine keras" in r.getMessage() for r in caplog.records)
    header, row = format_predictions(results, predictor.classes, "csv").splitlines()
    assert header.split(",")[-1] == "unlike_training" and row.endswith(",")
    plain, _ = predict_files(replace(predictor, engine=OnnxEngine(predictor.model)), files)  # no familiarity file
    assert "unlike_training" not in plain[0]


def test_heatmap_names_come_from_every_input_unreadable_ones_too(predictor, tmp_path):
    """Issue 30: the names the command checks before any work (every input) are the names written."""
    bad = tmp_path / "a" / "x.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png")
    good = write_png(tmp_path / "b" / "x.png", gray(1, (32, 32)))
    results, failures = predict_files(predictor, [bad, good], heatmaps=tmp_path / "maps")
    assert list(failures) == [str(bad)]
    assert [Path(r["heatmap"]).name for r in results] == ["x_gradcam_2.png"]  # as heatmap_names([bad, good]) says


def test_images_the_run_trained_on_are_marked_and_near_ties_called_so(predictor, tmp_path, caplog):
    """Issue 31: predict says which images the run trained or validated on (same file name or pixels,
    as evaluate leaves them out) and when its top two classes are within NEAR_TIE."""
    import shutil
    from dataclasses import replace

    from covidxray.inference.predict import NEAR_TIE, SEEN

    run = shutil.copytree(predictor.path, tmp_path / "run")
    files = [write_png(tmp_path / f"x{i}.png", gray(i, (32, 32))) for i in range(3)]
    (run / "split.csv").write_text("path,original_name,pixels,split\n"
                                   "/elsewhere/x0.png,x0.png,,train\n/elsewhere/y.png,y.png,,test\n")
    with caplog.at_level("WARNING", logger="covidxray"):
        results, _ = predict_files(replace(predictor, path=run), files)
    assert [r["seen_in_training"] for r in results] == [True, False, False]  # x0 by its name; a test image is not
    assert [r.getMessage() for r in caplog.records if SEEN in r.getMessage()] == [f"{files[0]}: {SEEN}"]
    for r in results:
        top, second = sorted(r["probabilities"].values())[-1:-3:-1]
        assert r["near_tie"] == (top - second < NEAR_TIE)
    (run / "split.csv").unlink()
    assert "seen_in_training" not in predict_files(replace(predictor, path=run), files)[0][0]  # the run cannot tell
