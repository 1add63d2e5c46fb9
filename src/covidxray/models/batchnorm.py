"""Batch normalisation: the layer covidxray's models use, and precise statistics.

:class:`BatchNormalization` is Keras's layer, trained on TensorFlow through TensorFlow's fused
kernel (one oneDNN operation forward and one backward, where Keras 3 composes moments and
arithmetic from a dozen operations): darkcovidnet trains about 1.5x faster on a CPU, and under
``mixed_bfloat16`` the convolutions run in bfloat16 while normalisation stays float32. Same
variables, same results (to float rounding), same saved format as Keras's layer; on JAX and
PyTorch, and at inference, it is Keras's layer unchanged.

Precise statistics (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): batch normalisation keeps moving averages of its inputs' mean and variance for inference.
On a small dataset those averages mix batches computed with much older weights, and the model
can then predict a single class at inference although it fits the training data. Recomputing
the statistics as a plain average over training images, with the current weights and without
augmentation, removes that mismatch.
"""

from __future__ import annotations

import keras
import numpy as np

AUGMENTATION_LAYER = "augmentation"


@keras.saving.register_keras_serializable(package="covidxray")
class BatchNormalization(keras.layers.BatchNormalization):
    """:class:`keras.layers.BatchNormalization` that trains through TensorFlow's fused kernel.

    Fused when the backend is TensorFlow, the layer is training, and the input is 4-D channels-last
    without a mask or renormalisation; otherwise Keras's own computation. The moving statistics
    follow Keras's rule (biased batch variance), so a model trained with either layer is the same model.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # the backend is TensorFlow here

        x = tf.cast(inputs, "float32")  # bfloat16 normalisation is slower on a CPU, and less exact
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        variance = variance * tf.maximum(count - 1.0, 0.0) / count  # the kernel returns the unbiased variance
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and len(inputs.shape) == 4 and self.axis in (-1, 3))


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
