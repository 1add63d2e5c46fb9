"""Precise batch-norm statistics (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

Batch normalisation keeps moving averages of its inputs' mean and variance for inference.
On a small dataset those averages mix batches computed with much older weights, and the model
can then predict a single class at inference although it fits the training data. Recomputing
the statistics as a plain average over training images, with the current weights and without
augmentation, removes that mismatch.
"""

from __future__ import annotations

import keras
import numpy as np

AUGMENTATION_LAYER = "augmentation"


def batch_norm_layers(layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer inside ``layer``, nested models included."""
    found = []
    for sub in getattr(layer, "layers", []):
        if isinstance(sub, keras.layers.BatchNormalization):
            found.append(sub)
        else:
            found += batch_norm_layers(sub)
    return found


def without_augmentation(model: keras.Model) -> keras.Model:
    """The model from the augmentation layer's output on (the model itself if it has none)."""
    try:
        return keras.Model(model.get_layer(AUGMENTATION_LAYER).output, model.output)
    except ValueError:
        return model


def recalibrate_batch_norm(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> int:
    """Set every batch-norm layer's moving statistics to their average over ``images``.

    Runs the model (augmentation skipped) in training mode batch by batch, with each layer's
    momentum set so that its moving statistics become the running mean of the batch
    statistics. Returns the number of layers updated.
    """
    layers = batch_norm_layers(model)
    if not layers or len(images) == 0:
        return 0
    body = without_augmentation(model)
    momenta = [layer.momentum for layer in layers]
    try:
        for step, start in enumerate(range(0, len(images), batch_size), start=1):
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / step  # moving = ((step-1) * moving + batch) / step
            body(images[start:start + batch_size].astype("float32"), training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)
