"""Model registry: ``create_model(name, ...)`` builds any model covidxray knows.

Every model takes a ``(size, size, 1)`` grayscale image with values in [0, 255] and returns
class probabilities; the scaling it needs and its training-time augmentation live inside it,
so a saved model carries its own preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from covidxray.errors import CovidXrayError
from covidxray.models import applications, compact, darkcovidnet
from covidxray.models.augment import augmentation

DEFAULT_MODEL = "compactnet"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model."""

    body: Callable  # (tensor, num_classes, **kwargs) -> probabilities
    image_size: int
    scaled_input: bool  # True: the body wants [0, 1]; False: it scales [0, 255] itself
    pretrained: bool = False  # accepts --weights imagenet
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "compactnet": ModelSpec(compact.compactnet, compact.DEFAULT_IMAGE_SIZE, True,
                            description="small residual CNN, chosen by test accuracy per CPU-minute"),
    "darkcovidnet": ModelSpec(darkcovidnet.darkcovidnet, darkcovidnet.DEFAULT_IMAGE_SIZE, True,
                              description="Ozturk et al. 2020: 17 conv layers, LeakyReLU, ~1.17 M parameters"),
    **{
        name: ModelSpec(
            lambda x, n, _name=name, **kw: applications.backbone(x, n, name=_name, **kw),
            applications.DEFAULT_IMAGE_SIZE, False, pretrained=True,
            description=f"keras.applications.{constructor}",
        )
        for name, (constructor, _) in applications.BACKBONES.items()
    },
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; an unknown name fails with the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise CovidXrayError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def create_model(
    name: str = DEFAULT_MODEL,
    *,
    num_classes: int,
    image_size: int | None = None,
    weights: str | None = None,
    augment: bool = True,
    flip: bool = False,
    seed: int | None = None,
    dtype_policy: str | None = None,
) -> keras.Model:
    """Build model ``name`` for ``num_classes`` classes on ``image_size`` px grayscale input.

    ``weights``: None or ``"none"`` (random), ``"imagenet"`` (backbones only), or the path
    of a ``.keras`` / ``.weights.h5`` file with weights for this architecture (for the
    ``keras.applications`` backbones: a weights file of the backbone without its top).
    ``dtype_policy``: None (Keras's global policy, float32 unless changed) or a Keras dtype policy
    such as ``"mixed_bfloat16"`` for the layers of this model; the probabilities stay float32.
    """
    if dtype_policy is None:
        return _create_model(name, num_classes=num_classes, image_size=image_size, weights=weights,
                             augment=augment, flip=flip, seed=seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        return _create_model(name, num_classes=num_classes, image_size=image_size, weights=weights,
                             augment=augment, flip=flip, seed=seed)
    finally:
        keras.config.set_dtype_policy(previous)


def _create_model(name, *, num_classes, image_size, weights, augment, flip, seed) -> keras.Model:
    spec = get_spec(name)
    size = image_size or spec.image_size
    weights = None if weights in (None, "none", "None") else weights
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise CovidXrayError(f"{weights}: no such weights file; use --weights none, imagenet or a file path")
    if weights == "imagenet" and not spec.pretrained:
        raise CovidXrayError(f"model {name!r} has no ImageNet weights; use --weights none or a file path")
    inputs = keras.Input((size, size, 1), name="image")
    x = augmentation(seed, flip=flip)(inputs) if augment else inputs
    if spec.scaled_input:
        x = keras.layers.Rescaling(1 / 255, name="scale")(x)
    if spec.pretrained:  # keras.applications loads (or downloads) the backbone weights itself
        try:
            outputs = spec.body(x, num_classes, weights=weights)
        except Exception as error:  # keras.utils.get_file raises plain Exception when offline
            if weights is None:
                raise
            raise CovidXrayError(
                f"cannot load {weights} weights for {name!r} ({error}); check the internet connection "
                "(ImageNet weights are downloaded on first use) or pass --weights with a file"
            ) from None
    else:
        outputs = spec.body(x, num_classes)
    if keras.config.dtype_policy().compute_dtype != "float32":  # probabilities and the loss in float32
        outputs = keras.layers.Activation("linear", dtype="float32", name="probabilities")(outputs)
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None and not spec.pretrained:
        try:
            model.load_weights(weights)
        except (ValueError, KeyError, OSError) as error:
            raise CovidXrayError(f"{weights}: weights do not fit model {name!r} ({error})") from None
    return model
