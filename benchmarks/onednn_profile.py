"""Where a training step's time goes on the CPU: oneDNN's own timing of every kernel it runs.

TensorFlow runs covidxray's convolutions, batch norms and pools on oneDNN (``TF_ENABLE_ONEDNN_OPTS=1``,
:func:`covidxray.backend.use_onednn`). With ``ONEDNN_VERBOSE=profile_exec`` oneDNN prints each kernel
it executes and how long it took. This script trains one model on synthetic images in a process of
its own with that setting, keeps the lines of the measured epochs (after a warm-up epoch), and
tables the milliseconds per training step by kernel (convolution forward, backward to the data,
backward to the weights, batch norm ...) beside the measured wall time of a step::

    python benchmarks/onednn_profile.py --model darkcovidnet:256
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/onednn_profile.py --model darkcovidnet:256   # an AVX2-only CPU's kernels

The kernels' times add up to more than the step when TensorFlow runs two of them at once (its
inter-op threads); what is left of the step beyond them is TensorFlow's own (Eigen) operations
and Keras. ``--shapes N`` also lists the N slowest kernels with their shapes.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time

from harness import markdown_table, worker_env, write_results

MARK = "covidxray-profile-epoch"  # printed at each measured epoch's start and end


def worker(model: str, size: int, batch_size: int, steps: int, epochs: int) -> None:
    """Train ``model`` for a warm-up epoch and ``epochs`` measured ones; print a mark around each
    measured epoch, the end mark with the epoch's wall seconds."""
    import keras
    from harness import synthetic_images

    import covidxray  # noqa: F401  (turns oneDNN on before TensorFlow loads)
    from covidxray.config import Runtime, TrainConfig
    from covidxray.training.fit import balanced_class_weights, build_model, fit_arrays

    class Marks(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch:
                print(f"{MARK} begin", flush=True)
                self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch:
                print(f"{MARK} end {time.perf_counter() - self.started}", flush=True)

    config = TrainConfig(data="synthetic", model=model, image_size=size, batch_size=batch_size, epochs=1 + epochs).resolve()
    runtime = Runtime(mixed_precision="float32").resolve(config)
    x, y = synthetic_images(steps * batch_size, size, len(config.classes))
    fit_arrays(build_model(config, len(x), runtime), x, y, epochs=1 + epochs, batch_size=batch_size,
               class_weight=balanced_class_weights(y, len(config.classes)), callbacks=[Marks()])


def kernel_times(lines, steps: int) -> tuple[dict, dict, float, int]:
    """Milliseconds per step by (kernel, direction) and by (kernel, direction, implementation,
    shape), from the ``onednn_verbose`` lines between the marks; the wall milliseconds of a step,
    and the number of measured epochs."""
    by_kind, by_shape = collections.Counter(), collections.Counter()
    measuring, seconds = False, []
    for line in lines:
        if line.startswith(MARK):
            measuring = line.split()[1] == "begin"
            if not measuring:
                seconds.append(float(line.split()[2]))
        elif measuring and line.startswith("onednn_verbose") and ",exec," in line:
            fields = line.rstrip().split(",")
            at = fields.index("exec")  # onednn_verbose,[timestamp,]v1,primitive,exec,cpu,KIND,IMPL,DIRECTION,...,SHAPE,MS
            kind, implementation, direction = fields[at + 2], fields[at + 3], fields[at + 4]
            by_kind[kind, direction] += float(fields[-1])
            by_shape[kind, direction, implementation, fields[-2]] += float(fields[-1])
    if not seconds:
        raise ValueError("no measured epoch in the worker's output")
    per_step = steps * len(seconds)
    return ({k: v / per_step for k, v in by_kind.items()}, {k: v / per_step for k, v in by_shape.items()},
            1000 * sum(seconds) / per_step, len(seconds))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="darkcovidnet:256", help="name:size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs after the warm-up epoch")
    parser.add_argument("--shapes", type=int, default=0, help="also list this many slowest kernels with their shapes")
    parser.add_argument("--out", default="onednn_profile.json")
    parser.add_argument("--markdown", default="onednn_profile.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    name, _, size = args.model.partition(":")
    size = int(size or 224)
    if args.worker:
        worker(name, size, args.batch_size, args.steps, args.epochs)
        return 0

    env = {**worker_env("tensorflow"), "ONEDNN_VERBOSE": "profile_exec"}
    command = [sys.executable, __file__, "--worker", "--model", args.model, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--epochs", str(args.epochs)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-4000:], file=sys.stderr)
        return done.returncode
    lines = done.stdout.splitlines()
    isa = next((line.split("isa:", 1)[1] for line in lines if ",info,cpu,isa:" in line), "unknown")
    by_kind, by_shape, step_ms, epochs = kernel_times(lines, args.steps)
    total = sum(by_kind.values())
    rows = [[kind, direction, f"{ms:.1f}", f"{ms / step_ms:.0%}"] for (kind, direction), ms in
            sorted(by_kind.items(), key=lambda item: -item[1])]
    rows += [["all oneDNN kernels", "", f"{total:.1f}", f"{total / step_ms:.0%}"],
             ["the training step (wall time)", "", f"{step_ms:.1f}", "100%"]]
    table = markdown_table(["kernel", "direction", "ms per step", "of the step"], rows, align="llrr",
                           caption=f"{args.model}, batch {args.batch_size}, float32, oneDNN's kernels for {isa}, {epochs} epochs of "
                                   f"{args.steps} steps")
    if args.shapes:
        slowest = sorted(by_shape.items(), key=lambda item: -item[1])[: args.shapes]
        table += "\n" + markdown_table(["kernel", "direction", "implementation", "shape", "ms per step"],
                                       [[*key, f"{ms:.1f}"] for key, ms in slowest], align="llllr")
    write_results(args.out, {"model": args.model, "batch_size": args.batch_size, "isa": isa, "epochs": epochs,
                             "steps": args.steps, "step_ms": step_ms,
                             "kernel_ms_per_step": {f"{k} {d}": ms for (k, d), ms in by_kind.items()}},
                  args.markdown, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
