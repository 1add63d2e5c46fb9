"""Two-stage fine-tuning of a pretrained backbone, as PyImageSearch and Keras's transfer-learning
guide teach it: stage one trains the new head on a frozen backbone (its random gradients would
otherwise wreck the pretrained features), stage two unfreezes the backbone's top blocks and goes on
at a lower learning rate (:data:`FINE_TUNE_RATE`, in :mod:`covidxray.training.fit`).

A backbone is the model nested in a covidxray model (``keras.applications`` backbones and
:mod:`covidxray.models.efficientnet_lite` are built so). Batch normalisation stays frozen in stage two
as well, in inference mode, as the Keras guide advises for small datasets.
"""

from __future__ import annotations

import keras

#: Share of the backbone's layers, counted from its output, that stage two trains.
TOP_FRACTION = 0.25


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The backbone nested in ``model``, or None for a model that has none (compactnet, darkcovidnet)."""
    return next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)


def freeze_backbone(model: keras.Model) -> None:
    """Stage one: nothing of the backbone trains (its batch norm runs in inference mode)."""
    backbone_of(model).trainable = False


def unfreeze_top(model: keras.Model, fraction: float = TOP_FRACTION) -> list[str]:
    """Stage two: the top ``fraction`` of the backbone's layers train, batch normalisation excepted;
    returns the names of the layers with weights that now train."""
    backbone = backbone_of(model)
    backbone.trainable = True
    cut = round(len(backbone.layers) * (1 - fraction))
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= cut and not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in backbone.layers if layer.trainable and layer.weights]
