"""What the training-time augmentation costs per Keras backend: covidxray's one ``RandomAffine``
against Keras's three resampling layers, and against no augmentation.

    python benchmarks/augmentation_speed.py                         # every installed backend
    python benchmarks/augmentation_speed.py --backends jax --model darkcovidnet:256

For each backend (a process of its own) and each augmentation (``keras-layers``:
``RandomRotation`` + ``RandomZoom`` + ``RandomTranslation`` with covidxray's ranges, as covidxray
used until it composed them; ``random-affine``: covidxray's layer; ``none``), on synthetic images:

- the augmentation alone: milliseconds per batch in training mode, compiled (``jax.jit`` or
  ``tf.function``; eager on torch);
- a training step of the model behind it (``train_on_batch``, Adam): the first step (which holds
  the compilation) and the median of ``--steps`` steps after it, in images per second.

Contrast is left out of all three: it is the same Keras ``RandomContrast`` either way.
Writes ``--out`` (JSON) and ``--markdown`` (the table).
"""

from __future__ import annotations

import argparse
import json
import statistics

import harness

BACKENDS = ("tensorflow", "jax", "torch")
AUGMENTATIONS = ("keras-layers", "random-affine", "none")


def augmentation_layers(kind: str, seed: int = 0):
    import keras

    from covidxray.models.augment import RandomAffine

    if kind == "keras-layers":
        return [keras.layers.RandomRotation(5 / 360, fill_mode="constant", seed=seed),
                keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 1),
                keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 2)]
    if kind == "random-affine":
        return [RandomAffine(rotation=5.0, zoom=0.1, shift=0.05, seed=seed)]
    return []


def compiled_call(layer):
    """``layer`` in training mode as the backend compiles it: a function of the images."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        step = jax.jit(lambda state, images: layer.stateless_call([], state, images, training=True)[0])
        state = [v.value for v in layer.non_trainable_variables]
        return lambda images: step(state, images).block_until_ready()
    if backend == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda images: layer(images, training=True))
        return lambda images: step(images).numpy()
    return lambda images: keras.ops.convert_to_numpy(layer(images, training=True))


def measure(kind: str, model_name: str, size: int, batch_size: int, steps: int) -> dict:
    import keras

    import covidxray  # noqa: F401  (KERAS_BACKEND is set by the parent)
    from covidxray.models import create_model

    images, labels = harness.synthetic_images(batch_size, size, 3)
    images = images.astype("float32")
    result = {"augmentation": kind}
    layers = augmentation_layers(kind)
    if layers:
        alone = keras.Sequential(layers)
        alone.build((None, size, size, 1))
        call = compiled_call(alone)
        alone_seconds = harness.timings(lambda: call(images), steps, warmup=1)
        result["augmentation_ms_per_batch"] = 1000 * statistics.median(alone_seconds)

    body = create_model(model_name, num_classes=3, image_size=size, augment=False, seed=0)
    inputs = keras.Input((size, size, 1))
    x = inputs
    for layer in augmentation_layers(kind):
        x = layer(x)
    model = keras.Model(inputs, body(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    step = harness.timings(lambda: model.train_on_batch(images, labels), 1 + steps)
    result["first_step_seconds"] = step[0]  # holds the compilation
    result["step_ms"] = 1000 * statistics.median(step[1:])
    result["train_images_per_second"] = batch_size / statistics.median(step[1:])
    return result


def worker(args) -> None:
    model_name, _, size = args.model.partition(":")
    size = int(size or 160)
    rows = [measure(kind, model_name, size, args.batch_size, args.steps) for kind in AUGMENTATIONS]
    import keras

    print(json.dumps({"backend": keras.backend.backend(), "keras": keras.__version__, "rows": rows}))


def markdown(results: list[dict], args) -> str:
    def alone(row):
        ms = row.get("augmentation_ms_per_batch")
        return "—" if ms is None else f"{ms:.1f}"

    return harness.markdown_table(
        ["backend", "augmentation", "augmentation alone ms/batch", "first step s", "step ms", "train img/s"],
        [[result["backend"], row["augmentation"], alone(row), f"{row['first_step_seconds']:.1f}",
          f"{row['step_ms']:.0f}", f"{row['train_images_per_second']:.0f}"]
         for result in results for row in result["rows"]],
        align="llrrrr", caption=f"Augmentation cost, {args.model} batch {args.batch_size}, median of {args.steps} "
        f"steps, {harness.host()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None, help="default: those installed")
    parser.add_argument("--model", default="compactnet:160", help="name:size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--out", default="augmentation_speed.json")
    parser.add_argument("--markdown", default="augmentation_speed.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    results = harness.run_backends(__file__, args.backends or harness.installed_backends(BACKENDS),
                                   lambda backend: ["--model", args.model, "--batch-size", str(args.batch_size),
                                                    "--steps", str(args.steps)],
                                   lambda rows: markdown(rows, args))
    harness.write_results(args.out, {"model": args.model, "batch_size": args.batch_size, "steps": args.steps,
                                     "machine": harness.machine(), "results": results},
                          args.markdown, markdown(results, args))
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
