"""ImageNet backbones from ``keras.applications``, adapted to grayscale X-rays.

The grayscale input is repeated to three channels and scaled the way each backbone expects, so
``--weights imagenet`` starts from the published ImageNet weights (downloaded by Keras on first
use) and ``--weights none`` trains from scratch.
"""

from __future__ import annotations

import keras

from covidxray.errors import CovidXrayError
from covidxray.models.pretrained import CONVERTERS, is_torch_checkpoint, load_backbone_weights
from covidxray.models.registry import BACKBONES

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone(x, num_classes: int, *, name: str, weights: str | None, dropout: float = 0.2):
    """A ``keras.applications`` body on a grayscale [0, 255] tensor; returns probabilities.

    ``weights``: None, ``"imagenet"`` (Keras downloads them), a Keras weights file of the backbone, or
    for ``densenet121_xrv`` a torchxrayvision checkpoint (:mod:`covidxray.models.pretrained`)."""
    constructor, scaling = BACKBONES[name]
    if scaling == "xrv" and weights == "imagenet":
        raise CovidXrayError(f"{name} scales its input for torchxrayvision's weights: pass --weights with a "
                             "torchxrayvision DenseNet121 file, or use --model densenet121 for ImageNet's")
    x = keras.layers.Concatenate(name="to_rgb")([x, x, x])
    if scaling == "torch":
        x = keras.layers.Rescaling(1 / 255, name="scale")(x)
        x = keras.layers.Normalization(mean=_IMAGENET_MEAN, variance=[s**2 for s in _IMAGENET_STD], name="imagenet_norm")(x)
    elif scaling == "xrv":  # torchxrayvision's datasets.normalize(img, 255): [0, 255] -> [-1024, 1024]
        x = keras.layers.Rescaling(2048 / 255, offset=-1024, name="xrv_scale")(x)
    converted = weights is not None and name in CONVERTERS  # a file for densenet121_xrv: imagenet is refused above
    if weights is not None and is_torch_checkpoint(weights) and name not in CONVERTERS:
        raise CovidXrayError(f"{weights}: a PyTorch checkpoint; model {name!r} takes Keras weights (a torchxrayvision "
                             "DenseNet121 file goes with --model densenet121_xrv)")
    base = getattr(keras.applications, constructor)(
        include_top=False, weights=None if converted else weights, input_shape=tuple(x.shape[1:]), pooling="avg"
    )
    if converted:
        load_backbone_weights(base, name, weights)
    x = base(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
