"""A small U-Net for lung segmentation (Ronneberger, Fischer and Brox, MICCAI 2015).

The network takes a ``(size, size, 1)`` grayscale X-ray with values in [0, 255] and returns the
probability, per pixel, that it lies in a lung (``(size, size, 1)``, sigmoid). Its preprocessing
lives inside it (:class:`ImageStandardization`: each image to zero mean and unit variance), so a
saved model needs nothing else to run. One level per entry of ``widths`` (its number of filters):
two 3x3 convolutions with batch norm and ReLU, then a 2x2 max-pool, down to the last (the bottom);
the decoder upsamples bilinearly, concatenates the encoder's features of the same resolution and
applies two 3x3 convolutions again. Besides that one layer, only core Keras layers, so the model
trains, saves and loads on TensorFlow, JAX and PyTorch. The shipped segmenter uses widths
(8, 16, 32, 48, 64) at 128 px; docs/lungs.md says why.
"""

from __future__ import annotations

import keras
from keras import ops

from covidxray.models.batchnorm import BatchNormalization

#: Batch-norm momentum as in covidxray.models.compact (Keras's 0.99 lags on small datasets).
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="covidxray")
class ImageStandardization(keras.layers.Layer):
    """Each image to zero mean and unit standard deviation over its pixels.

    X-rays come from many machines, scanners, photographs of films and paper figures; their
    brightness and contrast differ far more than their anatomy does. Standardising each image
    removes the overall exposure before the first convolution. ``epsilon`` keeps a flat image
    (a blank or a 1-pixel-high one resized) finite.
    """

    def __init__(self, epsilon: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, images):
        x = ops.cast(images, "float32")
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2, 3), keepdims=True))
        return (x - mean) / (std + self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def conv_block(x, filters: int, name: str):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{i}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def unet(image_size: int, widths: tuple[int, ...], name: str = "lung_unet") -> keras.Model:
    """The U-Net on ``(image_size, image_size, 1)`` images in [0, 255]: one level per entry of
    ``widths`` (its filters), the last being the bottom; ``image_size`` must be a multiple of
    ``2 ** (len(widths) - 1)``. Returns lung probabilities ``(image_size, image_size, 1)``."""
    widths = tuple(int(w) for w in widths)
    depth = len(widths) - 1
    if depth < 1 or min(widths) < 1:
        raise ValueError(f"unet: widths {widths} needs two or more levels of at least one filter")
    if image_size % 2 ** depth:
        raise ValueError(f"unet: image_size {image_size} must be a multiple of 2**{depth} = {2 ** depth}")
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = ImageStandardization(name="standardize")(inputs)
    skips = []
    for level in range(depth):
        x = conv_block(x, widths[level], name=f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = conv_block(x, widths[depth], name="bottom")
    for level in reversed(range(depth)):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_upsample")(x)
        x = keras.layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = conv_block(x, widths[level], name=f"up{level}")
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="lung")(x)
    return keras.Model(inputs, outputs, name=name)
