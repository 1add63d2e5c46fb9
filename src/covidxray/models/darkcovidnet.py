"""DarkCovidNet (Ozturk et al., Computers in Biology and Medicine 2020).

A Darknet-19-style network: 17 convolutional layers, each followed by batch normalisation and
LeakyReLU(0.1), five max-pools, a 3-channel convolution, flatten and a dense classifier;
about 1.17 M parameters at 256 x 256. Layout follows the authors' fastai code
(muhammedtalo/COVID-19).
"""

from __future__ import annotations

import keras

from covidxray.models.batchnorm import BatchNormalization

# PyTorch's default (momentum 0.1 there): Keras's 0.99 lags behind the weights on small
# datasets, and the model then predicts one class at inference (measured: 44% vs 61%).
BN_MOMENTUM = 0.9



def conv_block(x, filters: int, kernel_size: int = 3, name: str = "conv"):
    """Convolution (no bias) -> batch norm -> LeakyReLU(0.1)."""
    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=name)(x)
    x = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.LeakyReLU(negative_slope=0.1, name=f"{name}_act")(x)


def triple_conv(x, filters: int, name: str):
    """3x3 to ``filters``, 1x1 back to half, 3x3 to ``filters`` again."""
    x = conv_block(x, filters, 3, name=f"{name}a")
    x = conv_block(x, filters // 2, 1, name=f"{name}b")
    return conv_block(x, filters, 3, name=f"{name}c")


def darkcovidnet(x, num_classes: int):
    """The DarkCovidNet body on an input tensor scaled to [0, 1]; returns class probabilities."""
    pool = 0

    def maxpool(t):
        nonlocal pool
        pool += 1
        return keras.layers.MaxPooling2D(2, name=f"pool{pool}")(t)

    x = maxpool(conv_block(x, 8, name="conv1"))
    x = maxpool(conv_block(x, 16, name="conv2"))
    x = maxpool(triple_conv(x, 32, name="conv3"))
    x = maxpool(triple_conv(x, 64, name="conv4"))
    x = maxpool(triple_conv(x, 128, name="conv5"))
    x = triple_conv(x, 256, name="conv6")
    x = conv_block(x, 128, 1, name="conv7")
    x = conv_block(x, 256, 3, name="conv8")
    x = conv_block(x, 3, 3, name="conv9")
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
