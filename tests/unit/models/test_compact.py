"""covidxray.models.compact: CompactNet, the default model."""

import keras
import numpy as np

from covidxray.models import DEFAULT_MODEL, MODELS, create_model
from covidxray.models.compact import WIDTHS


def test_default_model_is_registered_and_small():
    assert DEFAULT_MODEL in MODELS
    model = create_model(num_classes=2)
    assert model.count_params() < 2e6
    assert model.output_shape == (None, 2)


def test_compactnet_has_four_residual_stages_at_a_quarter_resolution():
    model = create_model("compactnet", num_classes=3, image_size=64, augment=False)
    assert model.get_layer("stem_pool").output.shape[1:3] == (16, 16)  # strided stem and pool: a quarter
    for stage, width in enumerate(WIDTHS, start=1):
        assert model.get_layer(f"stage{stage}_block2_out").output.shape[-1] == width
    assert model.get_layer("stage4_block2_out").output.shape[1:3] == (2, 2)  # stages 2-4 halve it again
    assert model.get_layer("stage1_block1_add").output.shape[-1] == WIDTHS[0] and model.get_layer("predictions").units == 3
    probabilities = model.predict(np.full((1, 64, 64, 1), 128, "float32"), verbose=0)
    assert probabilities.shape == (1, 3) and abs(float(probabilities.sum()) - 1) < 1e-5
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.9 for layer in norms)
