"""covidxray.models.darkcovidnet: the architecture of Ozturk et al. (2020)."""

import keras

from covidxray.models import create_model


def test_darkcovidnet_matches_the_paper():
    model = create_model("darkcovidnet", num_classes=3)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    leaky = [layer for layer in model.layers if isinstance(layer, keras.layers.LeakyReLU)]
    assert model.input_shape == (None, 256, 256, 1)
    assert len(convs) == 17
    assert len(leaky) == 17
    assert 1.10e6 < model.count_params() < 1.20e6
    assert model.output_shape == (None, 3)
