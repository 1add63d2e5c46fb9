"""``covidxray export`` (ONNX, SavedModel) and ``predict --engine onnxruntime``: the same probabilities as Keras."""

import json

import numpy as np
import pytest

from covidxray.cli import main
from covidxray.models import load_model
from helpers import make_dataset

CLASSES = ["covid", "normal", "pneumonia"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run: one epoch on synthetic images (with augmentation, which the export must leave out)."""
    root = tmp_path_factory.mktemp("export")
    data = make_dataset(root / "data", per_class=10)
    run = root / "run"
    assert main(["--quiet", "train", "--data", str(data), "--out", str(run), "--image-size", "32", "--epochs", "1",
                 "--cache-dir", str(root / "cache")]) == 0
    return data, run


def _images(data, n=6):
    from covidxray.data.images import read_image, resize_square

    files = sorted(data.rglob("*.png"))[::4][:n]
    return files, np.stack([resize_square(read_image(f), 32) for f in files])[..., None].astype("float32")


def test_onnx_matches_keras(trained, capsys):
    import onnx

    from covidxray.inference.engines import OnnxModel

    data, run = trained
    assert main(["--quiet", "export", "--run", str(run), "--format", "onnx"]) == 0
    assert str(run / "model.onnx") in capsys.readouterr().out
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # written atomically, nothing left over
    graph = onnx.load(str(run / "model.onnx"))
    assert not [n.op_type for n in graph.graph.node if "Random" in n.op_type]  # no augmentation in the export
    exported = OnnxModel(run / "model.onnx")
    assert list(exported.classes) == CLASSES and exported.image_size == 32  # carried in the ONNX metadata
    _, images = _images(data)
    keras_probabilities = load_model(run / "model.keras").predict(images, verbose=0)
    onnx_probabilities = exported.predict(images, batch_size=4)  # two batches, the second one short
    assert onnx_probabilities.shape == (len(images), 3)
    assert np.abs(onnx_probabilities - keras_probabilities).max() < 1e-4
    assert np.abs(keras_probabilities - keras_probabilities.mean(axis=0)).max() > 1e-3  # not a constant output


def test_predict_with_onnxruntime(trained, capsys):
    data, run = trained
    files, _ = _images(data, 3)
    (run / "model.onnx").unlink(missing_ok=True)
    assert main(["--quiet", "predict", "--run", str(run), "--engine", "onnxruntime", str(files[0])]) == 2
    err = capsys.readouterr().err
    assert "model.onnx" in err and "covidxray export --run" in err and len(err.strip().splitlines()) == 1
    assert main(["--quiet", "export", "--run", str(run)]) == 0
    capsys.readouterr()
    outputs = {}
    for engine in ("keras", "onnxruntime"):
        assert main(["--quiet", "predict", "--run", str(run), "--engine", engine, *map(str, files), "--format", "json"]) == 0
        outputs[engine] = json.loads(capsys.readouterr().out)
    for k, o in zip(outputs["keras"], outputs["onnxruntime"]):
        assert k["path"] == o["path"] and k["label"] == o["label"]
        assert all(abs(k["probabilities"][c] - o["probabilities"][c]) < 1e-4 for c in CLASSES)


def test_export_to_another_path_and_savedmodel(trained, tmp_path, capsys):
    import keras

    data, run = trained
    _, images = _images(data, 4)
    expected = load_model(run / "model.keras").predict(images, verbose=0)
    target = tmp_path / "elsewhere" / "x.onnx"
    assert main(["--quiet", "export", "--run", str(run), "--out", str(target)]) == 0
    from covidxray.inference.engines import OnnxModel

    assert np.abs(OnnxModel(target).predict(images) - expected).max() < 1e-4
    if keras.backend.backend() != "tensorflow":
        assert main(["--quiet", "export", "--run", str(run), "--format", "savedmodel"]) == 2
        assert "KERAS_BACKEND=tensorflow" in capsys.readouterr().err
        return
    import tensorflow as tf

    for _ in range(2):  # the second export replaces the first whole
        assert main(["--quiet", "export", "--run", str(run), "--format", "savedmodel"]) == 0
    saved = run / "saved_model"
    assert json.loads((saved / "covidxray.json").read_text())["classes"] == CLASSES
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    loaded = tf.saved_model.load(str(saved))  # keep a reference: its variables live as long as it does
    served = loaded.serve(tf.constant(images)).numpy()
    assert np.abs(served - expected).max() < 1e-4


def test_a_bad_onnx_file_is_a_clear_error(trained, tmp_path, capsys):
    import shutil

    data, run = trained
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    files, _ = _images(data, 1)
    assert main(["--quiet", "predict", "--run", str(broken), "--engine", "onnxruntime", str(files[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert str(broken / "model.onnx") in err and "covidxray export" in err and len(err.splitlines()) == 1
