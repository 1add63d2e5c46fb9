"""Train one epoch over 50,000 synthetic images streamed from shards, sampling resident memory.

    python benchmarks/streaming_memory.py --images 50000 --image-size 64 --out benchmarks/results/streaming

1. Generates the images a chunk at a time straight into shard files (``ShardWriter``): no more
   than one chunk and one shard are in memory, whatever ``--images``.
2. Trains the default model for one epoch over every image, in batches streamed from the shards
   by ``ShuffledBatches`` (a ``keras.utils.PyDataset`` with worker threads), reading the
   process's memory from ``/proc/self/status`` after every batch.

Writes to ``--out``: ``memory.csv`` (phase, step, images, seconds, rss_mb, anon_mb, file_mb),
``memory.png`` (memory against batches) and ``summary.json``, also printed: peak RSS, RSS at
10% and at 100% of the epoch, and the size of the dataset for comparison. ``rss`` is VmRSS,
``anon`` the process's own allocations (RssAnon), ``file`` mapped files (RssFile: libraries).
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import write_results

import covidxray  # noqa: F401  (chooses the Keras backend before anything imports Keras)
from covidxray.data.shards import ShardWriter, load_shards
from covidxray.labels import task_classes
from covidxray.models import DEFAULT_MODEL, create_model
from covidxray.training.batches import ShuffledBatches

FIELDS = ("phase", "step", "images", "seconds", "rss_mb", "anon_mb", "file_mb")


def memory_mb() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of this process in MiB."""
    wanted = {"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in wanted:
                found[wanted[key]] = round(int(value.split()[0]) / 1024, 1)
    return found


def synthetic_chunk(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Images whose class is easy to see (as in the tests): a bright disc, noise, or stripes."""
    images = rng.normal(90, 12, (len(labels), size, size))
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 3) ** 2 + (xx - size / 3) ** 2 < (size / 5) ** 2
    images[labels == 0] = np.where(disc, 230, images[labels == 0])
    images[labels == 2] += np.where((yy // 4) % 2 == 0, 110, 0)
    return np.clip(images, 0, 255).astype(np.uint8)


def write_synthetic_shards(folder: Path, count: int, size: int, shard_size: int, classes, samples: list, clock) -> None:
    rng = np.random.default_rng(0)
    writer = ShardWriter(folder, size, shard_size)
    chunk = 512
    for start in range(0, count, chunk):
        labels = rng.integers(0, len(classes), min(chunk, count - start))
        for offset, (image, label) in enumerate(zip(synthetic_chunk(rng, labels, size), labels)):
            i = start + offset
            writer.add(image, {"path": f"synthetic/{i:06d}.png", "label": classes[label], "patient_id": f"p{i}",
                               "source": "synthetic", "original_label": classes[label], "pixels": ""})
        samples.append({"phase": "write", "step": start // chunk, "images": start + len(labels),
                        "seconds": clock(), **memory_mb()})
    writer.close()


class MemorySampler:
    """A Keras callback (built lazily, so that Keras is imported after the backend is chosen)."""

    def __new__(cls, samples: list, batch_size: int, clock):
        import keras

        class Sampler(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                samples.append({"phase": "train", "step": batch + 1, "images": (batch + 1) * batch_size,
                                "seconds": clock(), **memory_mb()})

        return Sampler()


def plot(samples: list, path: Path) -> None:
    from matplotlib.figure import Figure

    train = [s for s in samples if s["phase"] == "train"]
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.subplots()
    steps = [s["step"] for s in train]
    for key, name in (("rss_mb", "resident (VmRSS)"), ("anon_mb", "anonymous (RssAnon)"), ("file_mb", "file-backed (RssFile)")):
        axes.plot(steps, [s[key] for s in train], label=name)
    axes.set_xlabel(f"training batch (of {len(train)})")
    axes.set_ylabel("MiB")
    axes.set_ylim(bottom=0)
    axes.set_title(f"Memory while training one epoch over {train[-1]['images']:,} images streamed from shards")
    axes.legend()
    figure.savefig(path, dpi=110)


def main() -> None:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="PyDataset reader threads")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--shards", default=None, help="folder for the shards (default: a temporary one, removed)")
    parser.add_argument("--out", default="benchmarks/results/streaming")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def clock() -> float:
        return round(time.perf_counter() - started, 2)

    classes = task_classes("three-class")
    shard_dir = Path(args.shards) if args.shards else Path(tempfile.mkdtemp(prefix="covidxray-shards-")) / "shards"
    samples = [{"phase": "start", "step": 0, "images": 0, "seconds": clock(), **memory_mb()}]
    try:
        write_synthetic_shards(shard_dir, args.images, args.image_size, args.shard_size, classes, samples, clock)
        write_seconds = clock()
        disk_mb = sum(p.stat().st_size for p in shard_dir.iterdir()) / 2**20
        table, images, _ = load_shards(shard_dir)
        targets = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        batches = ShuffledBatches(images, targets, args.batch_size, seed=0, workers=args.workers)
        keras.utils.set_random_seed(0)
        model = create_model(args.model, num_classes=len(classes), image_size=args.image_size, seed=0)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        samples.append({"phase": "model", "step": 0, "images": 0, "seconds": clock(), **memory_mb()})
        history = model.fit(batches, epochs=1, verbose=2, shuffle=False,
                            callbacks=[MemorySampler(samples, args.batch_size, clock)])
    finally:
        if not args.shards:
            shutil.rmtree(shard_dir.parent, ignore_errors=True)
    train = [s for s in samples if s["phase"] == "train"]
    train[-1]["images"] = args.images  # the last batch may be short
    at = {p: train[max(0, round(len(train) * p / 100) - 1)] for p in (10, 50, 100)}
    summary = {
        "images": args.images, "image_size": args.image_size, "batch_size": args.batch_size, "batches": len(train),
        "model": args.model, "backend": keras.backend.backend(), "cpus": os.cpu_count(),
        "dataset_mb_on_disk": round(disk_mb, 1), "dataset_mb_as_float32": round(args.images * args.image_size ** 2 * 4 / 2**20, 1),
        "write_seconds": write_seconds, "train_seconds": round(train[-1]["seconds"] - write_seconds, 1),
        "train_images_per_second_after_first_batch": round((args.images - args.batch_size) / (train[-1]["seconds"] - train[0]["seconds"]), 1),
        "peak_rss_mb_writing": max(s["rss_mb"] for s in samples if s["phase"] == "write"),
        "peak_rss_mb_training": max(s["rss_mb"] for s in train),
        **{f"rss_mb_at_{p}pct": s["rss_mb"] for p, s in at.items()},
        **{f"anon_mb_at_{p}pct": s["anon_mb"] for p, s in at.items()},
        "rss_growth_mb_10_to_100pct": round(at[100]["rss_mb"] - at[10]["rss_mb"], 1),
        "final_loss": round(float(history.history["loss"][-1]), 4),
        "final_accuracy": round(float(history.history["accuracy"][-1]), 4),
    }
    with open(out / "memory.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(samples)
    plot(samples, out / "memory.png")
    write_results(out / "summary.json", summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
