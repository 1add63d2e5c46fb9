"""Several trained models as one: a Keras model that averages their class probabilities.

The ensemble is one flat functional model (the members' layers renamed ``m0_...``, ``m1_...``),
so everything that reads a run's ``model.keras`` (predict, evaluate, serve, export to ONNX, the
heatmaps, the familiarity features) reads an ensemble unchanged. The members' training
augmentation (identity at inference) is left out, so the exported graph holds no random op and
the ensemble has no test-time augmentation. Heatmaps and familiarity features come from the
layers of the last member (the last convolution; the last layer at each resolution).
"""

from __future__ import annotations

import keras

from covidxray.errors import CovidXrayError
from covidxray.models.batchnorm import AUGMENTATION_LAYER


def average_models(members: list[keras.Model]) -> keras.Model:
    """One model whose output is the mean of ``members``' outputs (one input shape, one output width)."""
    if len(members) < 2:
        raise CovidXrayError("an ensemble needs two or more models")
    first = members[0]
    for i, member in enumerate(members[1:], start=1):
        if member.input_shape != first.input_shape or member.output_shape != first.output_shape:
            raise CovidXrayError(f"model {i + 1} takes {member.input_shape} and gives {member.output_shape}, model 1 "
                                 f"{first.input_shape} and {first.output_shape}; an ensemble's models must match")
    inputs = keras.Input(first.input_shape[1:], name="image")
    outputs = []
    for i, member in enumerate(members):
        clone = keras.models.clone_model(member, input_tensors=inputs,
                                         clone_function=lambda layer, i=i: _member_layer(layer, i))
        for layer in member.layers:
            if layer.weights:
                clone.get_layer(f"m{i}_{layer.name}").set_weights(layer.get_weights())
        outputs.append(clone.output)
    return keras.Model(inputs, keras.layers.Average(name="predictions")(outputs), name="ensemble")


def _member_layer(layer, i: int):
    """Member ``i``'s layer in the ensemble, renamed ``m{i}_NAME``; its augmentation an identity."""
    if layer.name == AUGMENTATION_LAYER:
        return keras.Sequential([keras.layers.Identity()], name=f"m{i}_{layer.name}")  # takes the same call arguments
    return layer.__class__.from_config({**layer.get_config(), "name": f"m{i}_{layer.name}"})
