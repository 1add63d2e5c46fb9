"""Training that penalises features which tell an X-ray's source: a gradient-reversal source head.

With ``--source-adversary WEIGHT`` the classifier trains inside a larger model with a second
output (Ganin and Lempitsky 2015, "Unsupervised domain adaptation by backpropagation"): a
small head reads the classifier's features (the input of its ``predictions`` layer) through a
:class:`GradientReversal` layer and learns to tell which source each training image came from.
The head's own weights learn to predict the source; the features below it receive that
gradient reversed and scaled by ``WEIGHT``, so they are pushed to carry less of what tells the
sources apart.

The head predicts the source *within the true class* (one softmax over the sources per class;
the loss reads the row of the image's class). Where every COVID image comes from one hospital,
a plain source head would fight the class itself; this one asks only what the class does not
explain, and a class with one source adds nothing. Only the classifier is saved: the head
exists during training (and in the run's backup, for resuming).
"""

from __future__ import annotations

import logging

import keras
import numpy as np
from keras import ops

from covidxray.errors import CovidXrayError
from covidxray.training.batches import sample_weights

log = logging.getLogger(__name__)

#: Output names of the training model.
CLASSES, SOURCE = "classes", "source"
#: Units of the source head's hidden layer.
HIDDEN_UNITS = 64


@keras.saving.register_keras_serializable(package="covidxray")
class GradientReversal(keras.layers.Layer):
    """The identity forward; backward, the gradient times ``-weight``.

    ``stop_gradient(x * (1 + w)) - w * x`` equals ``x`` and has gradient ``-w``: one expression
    that every Keras backend differentiates, with no backend-specific custom gradient.
    """

    def __init__(self, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.weight = float(weight)

    def call(self, x):
        return ops.stop_gradient(x * (1.0 + self.weight)) - self.weight * x

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


def source_targets(labels: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each training image's (class, source) pair as one integer, ``class * S + source``, and the
    ``S`` source names in index order."""
    names = sorted({str(s) for s in sources})
    index = {name: i for i, name in enumerate(names)}
    source = np.array([index[str(s)] for s in sources], dtype=np.int64)
    return np.asarray(labels, dtype=np.int64) * len(names) + source, names


def conditional_source_loss(num_sources: int):
    """Cross-entropy of the source head's row for the image's class, on targets of :func:`source_targets`."""

    def source_loss(y_true, y_pred):  # y_pred: (batch, classes, sources), each row a softmax
        target = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        of_class = ops.expand_dims(ops.one_hot(target // num_sources, ops.shape(y_pred)[1]), -1)
        rows = ops.sum(ops.multiply(ops.convert_to_tensor(y_pred), of_class), axis=1)
        return keras.losses.sparse_categorical_crossentropy(target % num_sources, rows)

    return source_loss


def with_source_head(model: keras.Model, num_sources: int, weight: float) -> keras.Model:
    """A model with ``model``'s layers and two outputs, ``classes`` (``model``'s probabilities) and
    ``source`` (per class, the probabilities of each of ``num_sources`` sources), the head reading
    ``model``'s features through a :class:`GradientReversal` of ``weight``."""
    try:
        features = model.get_layer("predictions").input
    except ValueError:
        raise CovidXrayError(f"model {model.name!r} has no 'predictions' layer to read features from; "
                             "--source-adversary needs one of covidxray's own models") from None
    num_classes = model.output.shape[-1]
    x = GradientReversal(weight, name="source_reversal")(features)
    x = keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="source_hidden")(x)
    x = keras.layers.Dense(num_classes * num_sources, name="source_logits")(x)
    x = keras.layers.Reshape((num_classes, num_sources), name="source_rows")(x)
    x = keras.layers.Softmax(axis=-1, dtype="float32", name=SOURCE)(x)
    return keras.Model(model.inputs, {CLASSES: model.output, SOURCE: x}, name=f"{model.name}_with_source_head")


class ClassifierLogs(keras.callbacks.Callback):
    """Put the classifier's scores under the names a one-output run logs: ``loss`` and ``accuracy``
    become the class loss and accuracy, the source head's loss stays as ``source_loss``. Keep it
    first among the callbacks."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or f"{CLASSES}_loss" not in logs:
            return
        logs["loss"] = logs.pop(f"{CLASSES}_loss")
        if f"{CLASSES}_accuracy" in logs:
            logs["accuracy"] = logs.pop(f"{CLASSES}_accuracy")


class SourceAdversary:
    """The handler of ``--source-adversary WEIGHT`` (see :mod:`covidxray.training.fit`): the fit trains
    the classifier inside :func:`with_source_head`'s model, on (class, source) targets, and logs the
    classifier's scores under their one-output names (:class:`ClassifierLogs`)."""

    def __init__(self, weight: float):
        self.weight = weight

    def attach(self, fit) -> None:
        """Change ``fit`` (a :class:`covidxray.training.fit.FitState`) to train against the source head."""
        source, names = source_targets(fit.y, fit.sources)
        if len(names) < 2:
            log.warning("--source-adversary: the training images come from one source (%s); the source head has "
                        "nothing to tell apart", names[0])
        fit.trainer = with_source_head(fit.model, len(names), self.weight)
        fit.compile(fit.trainer, loss={CLASSES: "sparse_categorical_crossentropy",
                                       SOURCE: conditional_source_loss(len(names))},
                    metrics={CLASSES: ["accuracy"]})
        fit.targets = {CLASSES: fit.y, SOURCE: source}
        if isinstance(fit.class_weight, dict):  # Keras takes class weights for one output only
            fit.class_weight = sample_weights(fit.y, fit.class_weight)
        fit.callbacks.insert(0, ClassifierLogs())  # first: the others read the names it gives
