"""Building and loading models: :func:`create_model` over the registry, :func:`load_model` for saved ones."""

from __future__ import annotations

import os
from pathlib import Path

import keras

from covidxray.errors import CovidXrayError
from covidxray.models.augment import augmentation
from covidxray.models.finetune import backbone_of
from covidxray.models.pretrained import converted_path, default_source, keras_models_dir
from covidxray.models.registry import DEFAULT_MODEL, model_spec


def create_model(
    name: str = DEFAULT_MODEL,
    *,
    num_classes: int,
    image_size: int | None = None,
    weights: str | None = None,
    augment: bool = True,
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
                             augment=augment, seed=seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        return _create_model(name, num_classes=num_classes, image_size=image_size, weights=weights,
                             augment=augment, seed=seed)
    finally:
        keras.config.set_dtype_policy(previous)


def _create_model(name, *, num_classes, image_size, weights, augment, seed) -> keras.Model:
    spec = model_spec(name)
    size = image_size or spec.image_size
    weights = None if weights in (None, "none", "None") else weights
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise CovidXrayError(f"{weights}: no such weights file; use --weights none, imagenet or a file path")
    if weights == "imagenet" and not spec.imagenet_weights:
        raise CovidXrayError(f"model {name!r} has no ImageNet weights; use --weights none or a file path")
    inputs = keras.Input((size, size, 1), name="image")
    x = augmentation(seed)(inputs) if augment else inputs
    if spec.scaled_input:
        x = keras.layers.Rescaling(1 / 255, name="scale")(x)
    if spec.imagenet_weights:  # keras.applications loads (or downloads) the backbone weights itself
        try:
            outputs = spec.build_body()(x, num_classes, weights=weights)
        except CovidXrayError:
            raise
        except Exception as error:  # keras.utils.get_file raises plain Exception when offline
            if weights is None:
                raise
            raise CovidXrayError(_weights_error(name, weights, error)) from None
    else:
        outputs = spec.build_body()(x, num_classes)
    if keras.config.dtype_policy().compute_dtype != "float32":  # probabilities and the loss in float32
        outputs = keras.layers.Activation("linear", dtype="float32", name="probabilities")(outputs)
    model = keras.Model(inputs, outputs, name=name)
    _check_body(model, name)
    if weights is not None and not spec.imagenet_weights:
        try:
            model.load_weights(weights)
        except (ValueError, KeyError, OSError) as error:
            raise CovidXrayError(f"{weights}: weights do not fit model {name!r} ({error})") from None
    return model


def _weights_error(name: str, weights: str, error: Exception) -> str:
    """One line for weights that could not be had: which file, why, and what to do."""
    reason = " ".join(str(error).split())
    if weights != "imagenet":
        return f"{weights}: cannot load it as the backbone weights of {name!r} ({reason}); pass a weights file of " \
               "this backbone without its top, or --weights imagenet"
    if "URL fetch failure" in reason:  # keras.utils.get_file: no network, or the server refused
        return (f"could not download the ImageNet weights of {name!r} ({reason}); download that URL on a machine "
                f"with internet into {keras_models_dir()}/ (Keras looks there first) or pass --weights FILE")
    return (f"cannot load the ImageNet weights of {name!r} ({reason}); delete the file in {keras_models_dir()}/ "
            "to download it again, or pass --weights FILE")


def _check_body(model: keras.Model, name: str) -> None:
    """The rule a registered body follows, checked as it is built: it ends in a Dense layer named
    ``predictions``, whose input the source head reads (Grad-CAM names its own need, a convolution,
    when it finds none)."""
    layers = {layer.name: layer for layer in model.layers}
    if not isinstance(layers.get("predictions"), keras.layers.Dense):
        raise CovidXrayError(f"model {name!r}: its body must end in a Dense layer named 'predictions' (the source "
                             "head reads the features at its input); name the last layer so")


def convert_weights(name: str, source=None, out=None, *, overwrite: bool = False) -> Path:
    """Convert PyTorch weights of model ``name``'s backbone (``source``: a ``.pth``/``.pt``; default: the
    file its pip package ships) into a Keras ``.weights.h5`` at ``out`` (default: where ``--weights
    imagenet`` looks, :func:`~covidxray.models.pretrained.converted_path`); returns the path written.

    ``covidxray weights convert NAME``; afterwards ``--weights FILE`` (or ``imagenet`` for the default
    path) needs no PyTorch."""
    from covidxray.files import atomic_save

    source = Path(source) if source is not None else default_source(name)
    if not source.is_file():
        raise CovidXrayError(f"{source}: no such file; give the PyTorch checkpoint with --source")
    out = Path(out) if out is not None else converted_path(name)
    if not out.name.endswith(".weights.h5"):
        raise CovidXrayError(f"--out {out}: Keras weights files end in .weights.h5; name it so")
    if out.exists() and not overwrite:
        raise CovidXrayError(f"--out {out}: exists; pass --overwrite to replace it")
    backbone = backbone_of(create_model(name, num_classes=2, weights=str(source), augment=False))

    def save(tmp: Path) -> None:
        named = tmp.with_name(tmp.name + ".weights.h5")  # Keras picks the format by this ending
        backbone.save_weights(named)
        os.replace(named, tmp)

    atomic_save(out, save)
    return out


def load_model(path) -> keras.Model:
    """A saved ``.keras`` model, without its optimizer; a clear error naming the file if it cannot be read."""
    import covidxray.models.augment  # noqa: F401  (register the custom layers the archive names)
    import covidxray.models.batchnorm  # noqa: F401

    path = Path(path)
    if not path.is_file():
        raise CovidXrayError(f"{path}: missing; is {path.parent} a finished covidxray run? (train one with covidxray train)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a bad archive
        raise CovidXrayError(f"{path}: cannot load the model ({error}); retrain the run") from None
