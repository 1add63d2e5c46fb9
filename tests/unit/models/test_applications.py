"""covidxray.models.applications: keras.applications backbones on grayscale input."""

import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import h5py
import keras
import numpy as np
import pytest

from covidxray.errors import CovidXrayError
from covidxray.models import create_model


def test_backbone_weights_from_a_file(tmp_path):
    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(96, 96, 3),
                                                   pooling="avg")
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    model = create_model("mobilenet_v3_small", num_classes=2, image_size=96, weights=str(path))
    loaded = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for expected, actual in zip(backbone.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(expected), keras.ops.convert_to_numpy(actual))


def test_the_gray_input_becomes_rgb_scaled_as_the_backbone_wants():
    model = create_model("densenet121", num_classes=2, image_size=32, augment=False)
    to_rgb = model.get_layer("to_rgb")
    assert to_rgb.output.shape[-1] == 3
    normalise = model.get_layer("imagenet_norm")  # densenet121: torch-style mean and standard deviation
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normalise.mean).ravel(), [0.485, 0.456, 0.406], rtol=1e-6)
    mobile = create_model("mobilenet_v3_small", num_classes=2, image_size=32, augment=False)
    assert "scale" not in [layer.name for layer in mobile.layers]  # rescales inside (include_preprocessing)


# --- --weights imagenet: Keras downloads the weights (here from a server on 127.0.0.1) -----------------

MOBILENET_NO_TOP = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1 that keras.applications' MobileNetV3 downloads from, with Keras's
    cache (``~/.keras``) in the test's folder; yields the served folder."""
    from keras.src.applications import mobilenet_v3
    from keras.src.backend import config

    served = tmp_path / "served"
    served.mkdir()
    (tmp_path / "keras-home").mkdir()  # Keras writes into /tmp/.keras where the home is not a writable folder
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(served)))
    httpd.RequestHandlerClass.log_message = lambda *args: None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(mobilenet_v3, "BASE_WEIGHT_PATH", f"http://127.0.0.1:{httpd.server_address[1]}/")
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras-home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    yield served
    httpd.shutdown()
    httpd.server_close()


def test_imagenet_weights_are_downloaded_once_and_loaded(weights_server, monkeypatch, tmp_path):
    from keras.src.applications import mobilenet_v3
    from keras.src.legacy.saving import legacy_h5_format

    published = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                    pooling="avg")
    path = weights_server / MOBILENET_NO_TOP
    with h5py.File(path, "w") as file:  # the layout of the published .h5 files (Keras 2's)
        legacy_h5_format.save_weights_to_hdf5_group(file, published)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(mobilenet_v3.WEIGHTS_HASHES, "small_224_1.0_float", ("unused", md5))

    model = create_model("mobilenet_v3_small", num_classes=2, image_size=32, weights="imagenet", augment=False)
    loaded = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for expected, actual in zip(published.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(expected), keras.ops.convert_to_numpy(actual))
    cached = tmp_path / "keras-home" / "models" / MOBILENET_NO_TOP
    assert cached.is_file()
    path.unlink()  # the second build reads the cached copy: no server file needed
    create_model("mobilenet_v3_small", num_classes=2, image_size=32, weights="imagenet", augment=False)


def test_no_network_fails_in_one_line_naming_the_url_and_what_to_do(weights_server, tmp_path):
    # nothing served: the server answers 404, as an offline machine fails its fetch
    with pytest.raises(CovidXrayError) as caught:
        create_model("mobilenet_v3_small", num_classes=2, image_size=32, weights="imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert "could not download the ImageNet weights of 'mobilenet_v3_small'" in message
    assert "http://127.0.0.1:" in message and MOBILENET_NO_TOP in message
    assert str(tmp_path / "keras-home" / "models") in message and "--weights FILE" in message


def test_training_fails_on_the_download_before_reading_the_data(weights_server, tmp_path, dataset):
    from covidxray.config import TrainConfig
    from covidxray.training.cv import cross_validate
    from covidxray.training.train import train

    config = TrainConfig(data=str(dataset), model="mobilenet_v3_small", weights="imagenet", image_size=32)
    with pytest.raises(CovidXrayError, match="could not download"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(CovidXrayError, match="could not download"):
        cross_validate(config, tmp_path / "cv", folds=2)
    assert not (tmp_path / "cv").exists()
