"""covidxray.models.applications: keras.applications backbones on grayscale input."""

import keras
import numpy as np

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
