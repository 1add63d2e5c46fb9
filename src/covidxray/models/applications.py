"""ImageNet backbones from ``keras.applications``, adapted to grayscale X-rays.

The grayscale input is repeated to three channels and scaled the way each backbone expects, so
``--weights imagenet`` starts from the published ImageNet weights (downloaded by Keras on first
use) and ``--weights none`` trains from scratch.
"""

from __future__ import annotations

import keras

from covidxray.models.registry import BACKBONES

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone(x, num_classes: int, *, name: str, weights: str | None, dropout: float = 0.2):
    """A ``keras.applications`` body on a grayscale [0, 255] tensor; returns probabilities."""
    constructor, scaling = BACKBONES[name]
    x = keras.layers.Concatenate(name="to_rgb")([x, x, x])
    if scaling == "torch":
        x = keras.layers.Rescaling(1 / 255, name="scale")(x)
        x = keras.layers.Normalization(mean=_IMAGENET_MEAN, variance=[s**2 for s in _IMAGENET_STD], name="imagenet_norm")(x)
    base = getattr(keras.applications, constructor)(
        include_top=False, weights=weights, input_shape=tuple(x.shape[1:]), pooling="avg"
    )
    x = base(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
