"""The speed reference: DarkCovidNet written in plain PyTorch (eager, channels_last, Adam).

The same layer list as ``covidxray.models.darkcovidnet`` (Ozturk et al. 2020, the authors'
fastai layout): 17 convolutions without bias, each followed by batch norm and LeakyReLU(0.1),
five max-pools, a 3-channel convolution, flatten and a dense classifier; 1,164,434 parameters
at 256 x 256 with three classes. It has no augmentation and no input pipeline: it trains on
float32 tensors already in memory, so it is the plain cost of the network on this machine.
``autocast="bfloat16"`` runs forward and loss under ``torch.autocast`` to bfloat16 (on a CPU
with AVX512_BF16 / AMX, PyTorch's own bfloat16 path): the like-for-like reference for a
covidxray model trained with ``--mixed-precision mixed_bfloat16``.

    python benchmarks/reference_darkcovidnet_torch.py --batch-size 32 --steps 10 [--autocast bfloat16]

Used by ``benchmarks/train_speed.py`` and ``benchmarks/gpu/run.sh`` (import: ``measure``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn


def conv_block(cin: int, cout: int, kernel_size: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(cout, momentum=0.1), nn.LeakyReLU(0.1)]


def triple_conv(cin: int, cout: int) -> list[nn.Module]:
    return conv_block(cin, cout) + conv_block(cout, cout // 2, 1) + conv_block(cout // 2, cout)


def darkcovidnet(num_classes: int = 3, image_size: int = 256) -> nn.Sequential:
    """The DarkCovidNet network for (N, 1, size, size) input in [0, 1]."""
    pool = nn.MaxPool2d(2)
    layers = [
        *conv_block(1, 8), pool,
        *conv_block(8, 16), pool,
        *triple_conv(16, 32), pool,
        *triple_conv(32, 64), pool,
        *triple_conv(64, 128), pool,
        *triple_conv(128, 256),
        *conv_block(256, 128, 1),
        *conv_block(128, 256),
        *conv_block(256, 3),
        nn.Flatten(),
        nn.Linear(3 * (image_size // 32) ** 2, num_classes),
    ]
    return nn.Sequential(*layers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(*, batch_size: int = 32, steps: int = 10, warmup: int = 3, image_size: int = 256,
            num_classes: int = 3, device: str = "cpu", channels_last: bool = True, predict: bool = True,
            latency_calls: int = 10, seed: int = 0, autocast: str | None = None) -> dict:
    """Train ``warmup`` then ``steps`` steps on random data; returns images/s and friends."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = darkcovidnet(num_classes, image_size).to(dev, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    # A few distinct batches, so that no cache holds one batch across steps.
    batches = [(torch.from_numpy(rng.random((batch_size, 1, image_size, image_size), dtype=np.float32))
                .to(dev).contiguous(memory_format=memory_format),
                torch.from_numpy(rng.integers(0, num_classes, batch_size)).to(dev)) for _ in range(4)]

    def autocasting():
        return torch.autocast(dev.type, dtype=getattr(torch, autocast or "bfloat16"), enabled=autocast is not None)

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        with autocasting():
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    model.train()
    for i in range(warmup):
        step(i)
    _sync(dev)
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(i)
    _sync(dev)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    result = {"batch_size": batch_size, "steps": steps, "image_size": image_size, "device": str(dev),
              "channels_last": channels_last, "autocast": autocast, "threads": torch.get_num_threads(),
              "parameters": sum(p.numel() for p in model.parameters()),
              "train_seconds": seconds, "train_images_per_second": steps * batch_size / seconds,
              "train_images_per_cpu_second": steps * batch_size / cpu_seconds}
    if predict:
        model.eval()
        with torch.no_grad(), autocasting():
            x = batches[0][0]
            model(x)
            _sync(dev)
            started = time.perf_counter()
            for _ in range(max(1, steps // 2)):
                model(x)
            _sync(dev)
            result["predict_images_per_second"] = max(1, steps // 2) * batch_size / (time.perf_counter() - started)
            one = x[:1]
            model(one)
            timings = []
            for _ in range(latency_calls):
                _sync(dev)
                started = time.perf_counter()
                model(one)
                _sync(dev)
                timings.append(time.perf_counter() - started)
            result["latency_ms"] = 1000 * float(np.median(timings))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None)
    args = parser.parse_args()
    print(json.dumps(measure(batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                             image_size=args.image_size, device=args.device,
                             channels_last=not args.no_channels_last, autocast=args.autocast)))


if __name__ == "__main__":
    main()
