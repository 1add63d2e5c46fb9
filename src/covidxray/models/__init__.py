"""Models: the registry (``list_models``, ``model_spec``), ``create_model`` and ``load_model``.

Every model takes a ``(size, size, 1)`` grayscale image with values in [0, 255] and returns
class probabilities; the scaling it needs and its training-time augmentation live inside it,
so a saved model carries its own preprocessing. Importing this package does not import Keras:
the registry is plain data, and Keras loads when a model is built or read.
"""

from __future__ import annotations

from covidxray.backend import import_keras_quietly
from covidxray.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, list_models, model_spec, register_model


def create_model(name: str = DEFAULT_MODEL, **options):
    """Build model ``name``: see :func:`covidxray.models.factory.create_model`."""
    import_keras_quietly()
    from covidxray.models.factory import create_model as create

    return create(name, **options)


def load_model(path):
    """A saved ``.keras`` model (covidxray's custom layers registered), or a clear error naming the file."""
    import_keras_quietly()
    from covidxray.models.factory import load_model as load

    return load(path)


__all__ = ["DEFAULT_MODEL", "MODELS", "ModelSpec", "create_model", "list_models", "load_model", "model_spec",
           "register_model"]
