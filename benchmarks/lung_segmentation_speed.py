"""How many X-rays a second ``covidxray lungs segment`` segments, per Keras backend.

    python benchmarks/lung_segmentation_speed.py                      # the shipped preset, TF and JAX
    python benchmarks/lung_segmentation_speed.py --run runs/lungs --backends jax --count 50
    python benchmarks/lung_segmentation_speed.py --untrained 128:16,24,32,48,64   # speed does not depend on weights

For each backend (a process of its own), on ``--count`` image files (default: JSRT films, 256 x 256):

- ``arrays``: :meth:`LungSegmenter.segment` on decoded arrays: resize to the model's size, the
  U-Net in batches, upsampling to the image's size, threshold, the two largest regions, quality;
- ``files``: :meth:`LungSegmenter.segment_files` without the cache: reading and decoding as well;
- ``files+write``: the same writing each mask and overlay PNG, as the command does;
- ``cached``: a second pass over the same files with the mask cache filled (no model runs);
- ``network``: the U-Net alone on batches of 32 at its input size, through Keras's compiled
  ``predict_on_batch`` (as the segmenter runs it) and through ONNX Runtime (the same network
  exported to ONNX; where onnxruntime and the backend's converter are installed).

Each is the best of ``--repeats`` timed passes after one untimed one (which holds the compilation).
The machine is shared, so the load average and the CPU milliseconds per image (all threads of the
process; on an idle 2-core machine, wall time is at best half of it) are recorded beside them.
Writes ``--out`` (JSON) and ``--markdown`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import harness

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_IMAGES = harness.HERE.parent.parent / "shared" / "data" / "jsrt" / "images"
RESULTS = harness.HERE / "results"


def segmenter(args):
    from covidxray.inference.lungs import LungSegmenter, load_segmenter

    if not args.untrained:
        return load_segmenter(args.run)
    from covidxray.models.unet import unet

    size, widths = args.untrained.split(":")
    size, widths = int(size), [int(w) for w in widths.split(",")]
    return LungSegmenter(unet(size, widths), {"kind": "lung-segmenter", "image_size": size, "widths": widths},
                         identity=f"untrained-{size}-{'-'.join(map(str, widths))}")


def worker(args) -> None:
    import keras

    import covidxray  # noqa: F401
    from covidxray.data.images import read_image
    from covidxray.inference.predict import expand_paths

    paths = expand_paths([args.images])[: args.count]
    lungs = segmenter(args)
    images = [read_image(p) for p in paths]
    n = len(paths)
    scratch = tempfile.TemporaryDirectory()
    cache = Path(scratch.name) / "cache"

    cpu_ms: dict[str, float] = {}

    def best(call, name: str) -> float:
        """The best wall time of ``args.repeats`` calls (after one that compiles); records the CPU
        milliseconds per image of that pass (all threads: on a shared machine, less noisy than wall time)."""
        call()
        passes = []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            passes.append((time.perf_counter() - wall, time.process_time() - cpu))
        wall, cpu = min(passes)
        cpu_ms[name] = round(1000 * cpu / n, 2)
        return wall

    row = {"backend": keras.backend.backend(), "image_size": lungs.image_size,
           "widths": lungs.settings.get("widths"), "files": n,
           "source_sizes": sorted({f"{i.shape[1]}x{i.shape[0]}" for i in images})[:3],
           "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    row["arrays_per_second"] = round(n / best(lambda: lungs.segment(images), "arrays"), 1)
    row["files_per_second"] = round(n / best(lambda: lungs.segment_files(paths, use_cache=False),
                                            "files"), 1)
    out = Path(scratch.name) / "out"
    row["files_write_per_second"] = round(n / best(lambda: lungs.segment_files(paths, out, use_cache=False), "files+write"), 1)
    lungs.segment_files(paths, cache_dir=cache)  # fills the cache
    row["cached_per_second"] = round(n / best(lambda: lungs.segment_files(paths, cache_dir=cache),
                                              "cached"), 1)
    row["network_per_second"] = network_speeds(lungs, best, Path(scratch.name))
    row["cpu_ms_per_image"] = cpu_ms
    row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    flags: dict[str, int] = {}
    for result in lungs.segment(images):
        flags[result.quality] = flags.get(result.quality, 0) + 1
    row["quality"] = flags
    scratch.cleanup()
    print(json.dumps(row), flush=True)


def network_speeds(lungs, best, scratch: Path) -> dict:
    """Images/s of the U-Net alone on one batch of 32, Keras ``predict_on_batch`` and ONNX Runtime."""
    import keras
    import numpy as np

    from covidxray.inference.lungs import BATCH

    size = lungs.image_size
    x = np.random.default_rng(0).integers(0, 256, (BATCH, size, size, 1)).astype(np.float32)
    speeds = {"keras": round(BATCH / best(lambda: lungs.model.predict_on_batch(x), "network keras"), 1)}
    try:
        import onnxruntime

        path = scratch / "unet.onnx"
        lungs.model.export(str(path), format="onnx", verbose=False,
                           input_signature=[keras.InputSpec(shape=(None, size, size, 1), dtype="float32")])
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        onnx_out = session.run(None, {name: x})[0]
        speeds["onnxruntime"] = round(BATCH / best(lambda: session.run(None, {name: x}), "network onnxruntime"), 1)
        speeds["max_difference"] = float(np.abs(onnx_out - np.asarray(lungs.model.predict_on_batch(x))).max())
    except Exception as error:  # noqa: BLE001 - no onnxruntime, or no converter for this backend
        speeds["onnxruntime_error"] = f"{type(error).__name__}: {error}"[:200]
    return speeds


def markdown(rows: list[dict], args) -> str:
    return harness.markdown_table(
        ["backend", "model input", "files", "arrays/s", "files/s", "files+write/s", "cached/s",
         "U-Net alone, Keras / ONNX Runtime (img/s)", "CPU ms/image (files)", "load avg"],
        [[r["backend"], r["image_size"], r["files"], r["arrays_per_second"], r["files_per_second"],
          r["files_write_per_second"], r["cached_per_second"],
          f"{r['network_per_second']['keras']} / {r['network_per_second'].get('onnxruntime', '-')}",
          r["cpu_ms_per_image"]["files"], r["load_average_before"][0]] for r in rows],
        caption=f"Lung segmentation speed ({args.untrained or args.run or 'preset:lungs_unet_jsrt_ieee8023'}), "
                f"best of {args.repeats} passes over {args.count} images, {harness.host()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                        help="default: TensorFlow and JAX where installed")
    parser.add_argument("--run", default=None, help="a lung segmenter's folder or preset:NAME (default: the preset)")
    parser.add_argument("--untrained", default=None, metavar="SIZE:WIDTHS",
                        help="an untrained U-Net instead, e.g. 128:16,24,32,48,64")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="a folder of images (default: JSRT's)")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "lung-segmentation-cpu-2core.json"))
    parser.add_argument("--markdown", default=str(RESULTS / "lung-segmentation-cpu-2core.md"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    options = ["--images", args.images, "--count", str(args.count), "--repeats", str(args.repeats)]
    options += ["--run", args.run] if args.run else []
    options += ["--untrained", args.untrained] if args.untrained else []
    backends = args.backends or harness.installed_backends(("tensorflow", "jax"))
    results = harness.run_backends(__file__, backends, lambda backend: options, lambda rows: markdown(rows, args))
    harness.write_results(args.out, {"run": args.run, "untrained": args.untrained, "images": args.images,
                                     "count": args.count, "repeats": args.repeats, "machine": harness.machine(),
                                     "results": results}, args.markdown, markdown(results, args))
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
