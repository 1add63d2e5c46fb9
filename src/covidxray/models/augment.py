"""Training-time augmentation as Keras layers inside the model (inactive at inference)."""

from __future__ import annotations

import math

import keras
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


def augmentation(seed: int | None = None) -> keras.Sequential:
    """Mild rotation (±5°), zoom (±10%), shift (±5%) and contrast (±10%).

    No horizontal flip: the heart sits on the patient's left, and text markers (L/R) would be
    mirrored.
    """
    def seed_of(i: int) -> int | None:  # one seed per layer, so their draws are independent
        return None if seed is None else seed + i

    layers = [
        RandomAffine(rotation=5.0, zoom=0.1, shift=0.05, seed=seed_of(0)),
        keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed_of(3)),
    ]
    return keras.Sequential(layers, name="augmentation")
