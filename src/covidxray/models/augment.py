"""Training-time augmentation as Keras preprocessing layers (inactive at inference)."""

from __future__ import annotations

import keras


def augmentation(seed: int | None = None, *, flip: bool = False) -> keras.Sequential:
    """Mild rotation (±5°), zoom (±10%), shift (±5%) and contrast (±10%); flip only if asked.

    No horizontal flip by default: the heart sits on the patient's left, and text markers
    (L/R) would be mirrored.
    """
    def seed_of(i: int) -> int | None:  # one seed per layer, so their draws are independent
        return None if seed is None else seed + i

    layers = [
        keras.layers.RandomRotation(5 / 360, fill_mode="constant", seed=seed_of(0)),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed_of(1)),
        keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed_of(2)),
        keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed_of(3)),
    ]
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed_of(4)))
    return keras.Sequential(layers, name="augmentation")
