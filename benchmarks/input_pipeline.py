"""The most images per second covidxray's input pipeline can feed, per Keras backend.

    python benchmarks/input_pipeline.py                          # every installed backend
    python benchmarks/input_pipeline.py --backends jax --sizes 256 --batch-sizes 32 128

Trains, through ``covidxray.training.fit.fit_arrays`` exactly as ``covidxray train`` feeds a model
(uint8 arrays in host memory, reshuffled each epoch, class weights as per-image weights; on
TensorFlow one repeated ``tf.data`` pipeline), a model that does almost no work: it scales the
uint8 batch, averages a few pixels of it and applies one ``Dense`` layer. Every batch still
travels whole to the device and through Keras's training step (optimizer update, metrics), so
the time per step is the host's share of a real training step: gathering the shuffled batch,
the sample weights, the transfer and Keras's per-step overhead. Its images per second is a
ceiling: no model trains faster through this pipeline on this host, whatever the accelerator.

On a GPU this says whether the input pipeline can keep up with a target (issue 4: 8,200
images/s at batch 32 for darkcovidnet at 256); ``benchmarks/gpu/run.sh`` runs it before the
training benchmark. Writes ``--out`` (JSON) and ``--markdown`` (the table).
"""

from __future__ import annotations

import argparse
import json
import statistics

import harness

BACKENDS = ("tensorflow", "jax", "torch")


def null_model(size: int, num_classes: int = 3):
    """Input -> scaling -> the mean of a 4x4 grid of pixels -> Dense: next to no device work."""
    import keras

    inputs = keras.Input((size, size, 1), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    stride = max(1, size // 4)
    x = keras.layers.Lambda(lambda t: keras.ops.mean(t[:, ::stride, ::stride, :], axis=(1, 2)))(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def measure(size: int, batch_size: int, steps_per_execution: int, steps: int, epochs: int) -> dict:
    import covidxray  # noqa: F401  (KERAS_BACKEND is set by the parent)
    from covidxray.training.fit import balanced_class_weights, fit_arrays

    x, y = harness.synthetic_images(steps * batch_size, size, 3)
    model = null_model(size)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    timer = harness.epoch_timer()
    fit_arrays(model, x, y, epochs=1 + epochs, batch_size=batch_size,
               class_weight=balanced_class_weights(y, 3), callbacks=[timer])
    epoch = statistics.median(timer.seconds[1:])  # the first epoch holds the compilation
    return {"image_size": size, "batch_size": batch_size, "steps_per_execution": steps_per_execution,
            "steps": steps, "jit_compile": bool(model.jit_compile), "ms_per_step": 1000 * epoch / steps,
            "images_per_second": len(x) / epoch}


def worker(args) -> None:
    import keras

    rows = [measure(size, batch, spe, args.steps, args.epochs)
            for size in args.sizes for batch in args.batch_sizes for spe in args.steps_per_execution]
    devices = None
    if keras.backend.backend() == "jax":
        import jax

        devices = [str(d) for d in jax.devices()]
    print(json.dumps({"backend": keras.backend.backend(), "keras": keras.__version__, "devices": devices,
                      "rows": rows}))


def markdown(results: list[dict], args) -> str:
    return harness.markdown_table(
        ["backend", "image size", "batch", "steps per execution", "jit_compile", "ms per step", "images/s"],
        [[result["backend"], row["image_size"], row["batch_size"], row["steps_per_execution"], row["jit_compile"],
          f"{row['ms_per_step']:.2f}", f"{row['images_per_second']:,.0f}"]
         for result in results for row in result["rows"]],
        align="lrrrlrr", caption=f"Input pipeline ceiling (a model that does almost no work), {args.steps} steps per "
        f"epoch, median of {args.epochs} epochs, {harness.host()}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None, help="default: those installed")
    parser.add_argument("--sizes", nargs="+", type=int, default=[160, 256])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--steps-per-execution", nargs="+", type=int, default=[1],
                        help="not for the torch backend, where Keras needs 1")
    parser.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs after the first")
    parser.add_argument("--out", default="input_pipeline.json")
    parser.add_argument("--markdown", default="input_pipeline.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    def arguments(backend: str) -> list[str]:
        spe = args.steps_per_execution if backend != "torch" else [1]
        return ["--sizes", *map(str, args.sizes), "--batch-sizes", *map(str, args.batch_sizes),
                "--steps-per-execution", *map(str, spe), "--steps", str(args.steps), "--epochs", str(args.epochs)]

    results = harness.run_backends(__file__, args.backends or harness.installed_backends(BACKENDS), arguments,
                                   lambda rows: markdown(rows, args))
    harness.write_results(args.out, {"steps": args.steps, "epochs": args.epochs, "machine": harness.machine(),
                                     "results": results}, args.markdown, markdown(results, args))
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
