"""CompactNet: the default model, chosen by test accuracy per CPU-minute (see benchmarks/).

A small residual CNN for grayscale X-rays: a strided 5x5 stem and a max-pool (a quarter of the
input resolution, as in ResNet), four stages of two residual 3x3 blocks (the first block of
stages 2-4 strided), global average pooling, dropout and a softmax.
"""

from __future__ import annotations

import keras

from covidxray.models.batchnorm import BatchNormalization

# PyTorch's default (momentum 0.1 there): Keras's 0.99 lags behind the weights on small
# datasets, and the model then predicts one class at inference (measured: 44% vs 61%).
BN_MOMENTUM = 0.9

WIDTHS = (16, 32, 64, 128)


def residual_block(x, filters: int, stride: int, name: str):
    """Two 3x3 convolutions with batch norm and ReLU, plus a (projected) shortcut."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    x = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(x)
    x = keras.layers.ReLU(name=f"{name}_relu1")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(x)
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def compactnet(x, num_classes: int, widths: tuple[int, ...] = WIDTHS, dropout: float = 0.3):
    """The CompactNet body on an input tensor scaled to [0, 1]; returns class probabilities."""
    x = keras.layers.Conv2D(widths[0], 5, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, filters in enumerate(widths, start=1):
        x = residual_block(x, filters, stride=1 if stage == 1 else 2, name=f"stage{stage}_block1")
        x = residual_block(x, filters, stride=1, name=f"stage{stage}_block2")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
