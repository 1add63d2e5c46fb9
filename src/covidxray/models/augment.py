"""Training-time augmentation as Keras layers inside the model (inactive at inference)."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="covidxray")
class RandomAffine(keras.layers.Layer):
    """Random rotation, zoom and shift composed into one affine map and resampled once.

    Keras's ``RandomRotation``, ``RandomZoom`` and ``RandomTranslation`` each resample the image,
    so stacking them interpolates (and blurs) three times; and they declare ``supports_jit =
    False`` (TensorFlow's transform op has no XLA kernel), which makes Keras train the *whole
    model* without compilation on every backend: on JAX, op by op (benchmarks/augmentation_speed.py).
    This layer draws the three per image, multiplies them into one matrix and calls
    ``keras.ops.image.affine_transform`` once (bilinear, zero fill); it declares itself
    compilable except on TensorFlow.

    ``rotation``: largest angle in degrees; ``zoom``: largest relative zoom in or out;
    ``shift``: largest shift as a fraction of the height and of the width (drawn separately).
    Only active with ``training=True``.
    """

    def __init__(self, rotation: float = 5.0, zoom: float = 0.1, shift: float = 0.05,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        for name, value, limit in (("rotation", rotation, 180.0), ("zoom", zoom, 1.0), ("shift", shift, 1.0)):
            if not 0 <= value < limit:
                raise ValueError(f"RandomAffine: {name}={value} must be in [0, {limit:g})")
        self.rotation, self.zoom, self.shift, self.seed = rotation, zoom, shift, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # TensorFlow's ImageProjectiveTransformV3 has no XLA kernel: there, jit_compile=True (Keras's
        # "auto" on a GPU) must fall back to a graph. JAX and torch compile the op fine.
        self.supports_jit = keras.backend.backend() != "tensorflow"

    def call(self, images, training=False):
        if not training:
            return images
        x = ops.cast(images, "float32")  # coordinates need float32 even under mixed precision
        transform = self.transforms(ops.shape(x)[0], height=x.shape[1], width=x.shape[2])
        out = ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="constant")
        return ops.cast(out, images.dtype)

    def transforms(self, batch, *, height: int, width: int):
        """``batch`` random maps as ``affine_transform`` rows ``[a0, a1, a2, b0, b1, b2, 0, 0]``.

        Output pixel ``(x, y)`` reads input ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``: a rotation by
        the angle and a scaling by the zoom about the image centre, then the shift.
        """
        def draw(limit):
            return keras.random.uniform((batch,), -limit, limit, seed=self.seed_generator)

        angle = draw(math.radians(self.rotation))
        scale = 1.0 + draw(self.zoom)  # > 1 reads a larger area: zooms out
        shift_x, shift_y = draw(self.shift) * width, draw(self.shift) * height
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a2 = cx - cos * cx + sin * cy + shift_x
        b2 = cy - sin * cx - cos * cy + shift_y
        zero = ops.zeros_like(angle)
        return ops.stack([cos, -sin, a2, sin, cos, b2, zero, zero], axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom, "shift": self.shift,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="covidxray")
class RandomAcquisition(keras.layers.Layer):
    """What another hospital's X-ray machine, viewer and export do to an image, drawn per image.

    On ``[0, 255]`` inputs, in this order: a gamma in [1/``gamma``, ``gamma``]; a blur (a 5 x 5
    Gaussian, sigma 1.2, mixed in at 0-100%) with probability 1/2; Gaussian noise of 0 to ``noise``
    grey levels; each border blanked by 0 to ``border`` of the side with probability 1/2 (the
    collimation and crops of other exports); and with probability 1/2 one black or white
    rectangle of 3-12% of the side somewhere (the text markers and labels other sites burn in).
    Only active with ``training=True``. JPEG re-encoding is not among them: it has no Keras op
    that every backend runs.
    """

    def __init__(self, gamma: float = 1.4, noise: float = 8.0, border: float = 0.08, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not (gamma >= 1 and noise >= 0 and 0 <= border < 0.5):
            raise ValueError(f"RandomAcquisition: gamma={gamma} must be >= 1, noise={noise} >= 0, border={border} "
                             "in [0, 0.5)")
        self.gamma, self.noise, self.border, self.seed = gamma, noise, border, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        radius = np.arange(5) - 2.0
        kernel = np.exp(-(radius[:, None] ** 2 + radius[None, :] ** 2) / (2 * 1.2 ** 2))
        self.kernel = (kernel / kernel.sum()).astype("float32")[:, :, None, None]

    def call(self, images, training=False):
        if not training:
            return images
        x = ops.cast(images, "float32")
        batch, height, width = ops.shape(x)[0], x.shape[1], x.shape[2]

        def draw(low=0.0, high=1.0):
            return keras.random.uniform((batch, 1, 1, 1), low, high, seed=self.seed_generator)

        def coin():
            return ops.cast(draw() < 0.5, "float32")

        log_gamma = math.log(self.gamma)
        x = 255.0 * ops.power(ops.clip(x / 255.0, 1e-6, 1.0), ops.exp(draw(-log_gamma, log_gamma)))
        blurred = ops.depthwise_conv(x, ops.convert_to_tensor(self.kernel), padding="same")
        x = x + draw() * coin() * (blurred - x)
        x = x + keras.random.normal(ops.shape(x), seed=self.seed_generator) * draw(0.0, self.noise)
        rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1, 1))
        cols = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width, 1))
        crop = coin()
        top, bottom = draw(0, self.border) * height * crop, draw(0, self.border) * height * crop
        left, right = draw(0, self.border) * width * crop, draw(0, self.border) * width * crop
        inside = (rows >= top) & (rows < height - bottom) & (cols >= left) & (cols < width - right)
        x = x * ops.cast(inside, "float32")
        side_y, side_x = draw(0.03, 0.12) * height, draw(0.03, 0.12) * width
        y0, x0 = draw() * (height - side_y), draw() * (width - side_x)
        patch = (rows >= y0) & (rows < y0 + side_y) & (cols >= x0) & (cols < x0 + side_x)
        patch = ops.cast(patch, "float32") * coin()
        value = 255.0 * ops.cast(draw() < 0.5, "float32")
        x = x * (1 - patch) + value * patch
        return ops.cast(ops.clip(x, 0.0, 255.0), images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "noise": self.noise, "border": self.border,
                "seed": self.seed}


def augmentation(seed: int | None = None, *, flip: bool = False, acquisition: bool = False) -> keras.Sequential:
    """Mild rotation (±5°), zoom (±10%), shift (±5%) and contrast (±10%); flip only if asked; with
    ``acquisition``, :class:`RandomAcquisition` first.

    No horizontal flip by default: the heart sits on the patient's left, and text markers
    (L/R) would be mirrored.
    """
    def seed_of(i: int) -> int | None:  # one seed per layer, so their draws are independent
        return None if seed is None else seed + i

    layers = [RandomAcquisition(seed=seed_of(5))] if acquisition else []
    layers += [
        RandomAffine(rotation=5.0, zoom=0.1, shift=0.05, seed=seed_of(0)),
        keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed_of(3)),
    ]
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed_of(4)))
    return keras.Sequential(layers, name="augmentation")
