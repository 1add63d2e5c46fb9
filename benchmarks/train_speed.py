"""Training and prediction speed of covidxray's models per Keras backend, as ratios to a plain
PyTorch reference timed in the same run.

    python benchmarks/train_speed.py                      # every installed backend, both models
    python benchmarks/train_speed.py --backends tensorflow --models darkcovidnet:256 --repeats 5
    python benchmarks/train_speed.py --quick              # a smoke test: tiny images, few steps
    python benchmarks/train_speed.py --backends tensorflow --models darkcovidnet:256 \
        --mixed-precision none mixed_bfloat16 --reference-autocast none bfloat16      # bfloat16, like for like
    python benchmarks/train_speed.py ... --env "" TF_NUM_INTEROP_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX512_CORE

For each backend (tensorflow, torch, jax) and model (``name:size``; default the default model
``compactnet:160`` and ``darkcovidnet:256``) it measures, on synthetic images:

- training images/s, end to end through covidxray's own input pipeline and model
  (``covidxray.training.fit.build_model`` + ``fit_arrays``: uint8 arrays in memory, augmentation in
  the model, class weights), after a warm-up epoch that holds the compilation;
- seconds per epoch of ``--epoch-images`` images (802: the three-class training split of
  DarkCovidNet data), from that rate;
- prediction images/s (``predict_arrays``, batches of 64) and single-image latency (median);
- peak memory (resident set size of the process).

The reference is ``benchmarks/reference_darkcovidnet_torch.py``: DarkCovidNet at 256 x 256 in
plain PyTorch (eager, channels_last, Adam, no augmentation). Each measurement runs in a process
of its own (Keras fixes its backend at import; peak memory is per process). Every repeat times
the reference first and then each covidxray configuration, so that each figure is also a
ratio to the reference measured minutes apart on the same machine: on a shared machine, the
ratios are steadier than the raw numbers. Medians over ``--repeats`` are reported.

Writes ``--out`` (JSON: every measurement, the medians, the machine) and ``--markdown`` (the table).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from harness import (
    BACKENDS,
    epoch_timer,
    installed_backends,
    machine,
    markdown_table,
    peak_rss_mib,
    synthetic_images,
    timings,
    worker_env,
    write_results,
)

DEFAULT_MODELS = ("compactnet:160", "darkcovidnet:256")
#: Figures compared with the reference, and whether larger is better.
FIGURES = {"train_images_per_second": True, "train_images_per_cpu_second": True, "predict_images_per_second": True,
           "latency_ms": False, "peak_rss_mib": False, "import_rss_mib": False}


# ---------------------------------------------------------------------------------------------
# Workers: one measurement (or a list of them), run inside a subprocess.


def measure_keras(job: dict) -> dict:
    """Train, predict and time one covidxray configuration; ``job`` as made by :func:`plan`."""
    import keras

    import covidxray  # noqa: F401  (KERAS_BACKEND is set by the parent)
    from covidxray.config import Runtime, TrainConfig
    from covidxray.inference.engines import predict_arrays
    from covidxray.training.fit import balanced_class_weights, build_model, fit_arrays

    imported = peak_rss_mib()  # the framework's own share of the peak: before any model or image
    config = TrainConfig(data="synthetic", model=job["model"], image_size=job["image_size"],
                         batch_size=job["batch_size"], epochs=1 + job["epochs"], augment=job["augment"]).resolve()
    runtime = Runtime(jit_compile=job["jit_compile"], mixed_precision=job["mixed_precision"],
                      steps_per_execution=job["steps_per_execution"]).resolve(config)
    n = job["steps"] * job["batch_size"]
    x, y = synthetic_images(n, config.image_size, len(config.classes))
    started = time.perf_counter()
    model = build_model(config, n, runtime)
    build_seconds = time.perf_counter() - started

    timer = epoch_timer()
    fit_arrays(model, x, y, epochs=config.epochs, batch_size=config.batch_size,
               class_weight=balanced_class_weights(y, len(config.classes)), callbacks=[timer])
    epoch_seconds = statistics.median(timer.seconds[1:])
    cpu_seconds = statistics.median(timer.cpu_seconds[1:])
    result = {
        "backend": keras.backend.backend(), "keras": keras.__version__, "parameters": int(model.count_params()),
        "import_rss_mib": imported,
        "jit_compile": bool(model.jit_compile),  # False: Keras runs the step uncompiled (op by op on JAX)
        "build_seconds": build_seconds, "first_epoch_seconds": timer.seconds[0], "epoch_seconds_measured": timer.seconds[1:],
        "train_images": n, "train_images_per_second": n / epoch_seconds,
        # CPU time of all the process's threads: on a shared machine, less noisy than wall time
        "train_images_per_cpu_second": n / cpu_seconds,
    }
    if job["predict"]:
        images = x[: min(n, 4 * 64)]
        (seconds,) = timings(lambda: predict_arrays(model, images), 1, warmup=1)
        result["predict_images_per_second"] = len(images) / seconds
        one = x[:1]
        result["latency_ms"] = 1000 * statistics.median(timings(lambda: predict_arrays(model, one),
                                                                job["latency_calls"], warmup=2))
    return result


def measure_reference(job: dict) -> dict:
    from reference_darkcovidnet_torch import measure  # imports torch: only in the reference's worker

    imported = peak_rss_mib()
    result = measure(batch_size=job["batch_size"], steps=job["steps"], warmup=job["warmup"],
                     image_size=job["image_size"], device=job["device"], predict=job["predict"],
                     latency_calls=job["latency_calls"], autocast=job.get("autocast"))
    return {**result, "import_rss_mib": imported}


def run_worker(jobs: list[dict]) -> list[dict]:
    """Run jobs one after the other in this process; a failing job is recorded, not fatal."""
    results = []
    for job in jobs:
        started = time.perf_counter()
        if job.get("deadline") and time.time() > job["deadline"]:
            result = {"ok": False, "error": "skipped: time budget spent", "job": job}
            results.append(result)
            print("RESULT " + json.dumps(result), flush=True)
            print(f"  {label(job)}: skipped, time budget spent", file=sys.stderr, flush=True)
            continue
        try:
            result = measure_reference(job) if job["kind"] == "reference" else measure_keras(job)
            result["ok"] = True
        except Exception as error:  # noqa: BLE001 - one failing configuration must not end the run
            traceback.print_exc()
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        result["seconds"] = time.perf_counter() - started
        result["peak_rss_mib"] = peak_rss_mib()
        result["job"] = job
        results.append(result)
        print("RESULT " + json.dumps(result), flush=True)  # the parent reads these lines
        print(f"  {label(job)}: " + (f"{result['train_images_per_second']:.1f} img/s training" if result["ok"]
                                      else result["error"]), file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# The parent: plan the jobs, run them in subprocesses, summarise.


def label(job: dict) -> str:
    if job["kind"] == "reference":
        autocast = f", autocast {job['autocast']}" if job.get("autocast") else ""
        return f"reference torch darkcovidnet:{job['image_size']} b{job['batch_size']} ({job['device']}{autocast})"
    extra = "" if job["augment"] else " no-augment"
    extra += f" {job['mixed_precision']}" if job["mixed_precision"] else ""
    extra += f" spe{job['steps_per_execution']}" if job["steps_per_execution"] > 1 else ""
    extra += f" jit={job['jit_compile']}" if job["jit_compile"] != "auto" else ""
    extra += "".join(f" {name}={value}" for name, value in job.get("env", {}).items())
    return f"{job['backend']} {job['model']}:{job['image_size']} b{job['batch_size']}{extra}"


def plan(args) -> tuple[list[dict], list[dict]]:
    """The reference jobs (one per batch size) and the covidxray jobs, in the order they run."""
    def steps(batch_size: int) -> int:
        return max(1, args.images_per_step_epoch // batch_size) if args.images_per_step_epoch else args.steps

    common = {"predict": not args.no_predict, "latency_calls": args.latency_calls}
    references = [{"kind": "reference", "image_size": args.reference_size, "batch_size": b, "warmup": args.warmup_steps,
                   "device": args.reference_device, "steps": steps(b), "autocast": None if autocast == "none" else autocast,
                   **common} for b in args.batch_size for autocast in args.reference_autocast]
    jobs = []
    for backend in args.backends:
        for config in args.configs or []:
            spec, batch_size, policy, spe = config.split("/")
            name, _, size = spec.partition(":")
            jobs.append({"kind": "keras", "backend": backend, "model": name, "image_size": int(size) if size else None,
                         "batch_size": int(batch_size), "steps": steps(int(batch_size)), "epochs": args.epochs,
                         "augment": args.augment != "off", "jit_compile": args.jit_compile,
                         "mixed_precision": None if policy == "none" else policy, "steps_per_execution": int(spe),
                         **common})
        for spec in [] if args.configs else args.models:
            name, _, size = spec.partition(":")
            for batch_size in args.batch_size:
                for policy, spe, augment in itertools.product(
                        args.mixed_precision, args.steps_per_execution,
                        [True, False] if args.augment == "both" else [args.augment == "on"]):
                    jobs.append({"kind": "keras", "backend": backend, "model": name,
                                 "image_size": int(size) if size else None, "batch_size": batch_size,
                                 "steps": steps(batch_size), "epochs": args.epochs, "augment": augment,
                                 "jit_compile": args.jit_compile, "mixed_precision": None if policy == "none" else policy,
                                 "steps_per_execution": spe, **common})
    environments = [dict(pair.split("=", 1) for pair in spec.split(",") if pair) for spec in args.env]
    jobs = [{**job, "env": env} for job in jobs for env in environments]
    return references, jobs


def run_subprocess(jobs: list[dict], backend: str | None, timeout: float) -> list[dict]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(jobs)]
    try:
        done = subprocess.run(command, env={**worker_env(backend), **jobs[0].get("env", {})}, stdout=subprocess.PIPE,
                              text=True,
                              timeout=max(1.0, timeout))
        stdout, error = done.stdout, f"worker exited with status {done.returncode} before this job's result"
    except subprocess.TimeoutExpired as stopped:
        stdout = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else (stopped.stdout or "")
        error = f"worker ran past {timeout:.0f} s and was stopped"
    results = [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    for job in jobs[len(results):]:
        print(f"  {label(job)}: {error}", file=sys.stderr, flush=True)
        results.append({"ok": False, "error": error, "job": job})
    return results


def summarise(measurements: list[dict], epoch_images: int) -> list[dict]:
    """Medians per configuration, and medians of the per-repeat ratios to the reference."""
    rows = []
    for key in dict.fromkeys(label(m["job"]) for m in measurements):
        mine = [m for m in measurements if label(m["job"]) == key]
        good = [m for m in mine if m.get("ok")]
        row = {"configuration": key, "job": mine[0]["job"], "ok": len(good), "failed": len(mine) - len(good),
               "errors": sorted({m["error"] for m in mine if not m.get("ok")})}
        for figure in FIGURES:
            values = [m[figure] for m in good if figure in m]
            if values:
                row[figure] = statistics.median(values)
            ratios = [m[figure] / m["reference"][figure] for m in good
                      if figure in m and m.get("reference") and m["reference"].get(figure)]
            if ratios:
                row[f"{figure}_ratio"] = statistics.median(ratios)
            like = [m[figure] / m["reference_like"][figure] for m in good
                    if figure in m and m.get("reference_like") and m["reference_like"].get(figure)]
            if like:
                row[f"{figure}_ratio_like"] = statistics.median(like)
        if "train_images_per_second" in row:
            row["epoch_seconds"] = epoch_images / row["train_images_per_second"]
        rows.append(row)
    return rows


def results_table(rows: list[dict], epoch_images: int) -> str:
    def fmt(row, figure, digits=1):
        if figure not in row:
            return "failed" if not row["ok"] else "-"
        text = f"{row[figure]:,.{digits}f}"
        ratio, like = row.get(f"{figure}_ratio"), row.get(f"{figure}_ratio_like")
        return (text + (f" ({ratio:.2f}x)" if ratio is not None else "")
                + (f" ({like:.2f}x autocast ref)" if like is not None else ""))

    return markdown_table(
        ["configuration", "train img/s (x ref)", "train img per CPU-s (x ref)", f"s/epoch ({epoch_images} img)",
         "predict img/s (x ref)", "latency ms (x ref)", "peak RSS MiB (x ref)", "of it after import MiB"],
        [[row["configuration"], fmt(row, "train_images_per_second"), fmt(row, "train_images_per_cpu_second"),
          f"{row['epoch_seconds']:.1f}" if "epoch_seconds" in row else "-", fmt(row, "predict_images_per_second"),
          fmt(row, "latency_ms"), fmt(row, "peak_rss_mib", 0), fmt(row, "import_rss_mib", 0)] for row in rows])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=None, choices=BACKENDS, help="default: those installed")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="name:size (size optional)")
    parser.add_argument("--batch-size", nargs="+", type=int, default=[32])
    parser.add_argument("--configs", nargs="+", default=None, metavar="MODEL:SIZE/BATCH/POLICY/SPE",
                        help="instead of the grid of --models, --batch-size, --mixed-precision and "
                        "--steps-per-execution: these configurations, in this order (POLICY: none or a mixed one)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per measured epoch")
    parser.add_argument("--images-per-step-epoch", type=int, default=None,
                        help="instead of --steps: this many images per measured epoch, whatever the batch size")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs after the warm-up epoch")
    parser.add_argument("--warmup-steps", type=int, default=3, help="reference steps before timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epoch-images", type=int, default=802, help="images per epoch for the s/epoch column")
    parser.add_argument("--mixed-precision", nargs="+", default=["none"],
                        choices=["none", "mixed_float16", "mixed_bfloat16"])
    parser.add_argument("--augment", choices=["on", "off", "both"], default="on")
    parser.add_argument("--jit-compile", default="auto", type=lambda s: {"true": True, "false": False}.get(s.lower(), s))
    parser.add_argument("--steps-per-execution", nargs="+", type=int, default=[1])
    parser.add_argument("--no-predict", action="store_true", help="time training only")
    parser.add_argument("--env", nargs="+", default=[""], metavar="NAME=VALUE[,NAME=VALUE]",
                        help="environments to time each covidxray configuration in (threads, oneDNN settings: e.g. "
                        "TF_NUM_INTRAOP_THREADS=1,TF_NUM_INTEROP_THREADS=1 or ONEDNN_MAX_CPU_ISA=AVX512_CORE); "
                        "\"\" is the environment as it is")
    parser.add_argument("--latency-calls", type=int, default=10)
    parser.add_argument("--reference-size", type=int, default=256)
    parser.add_argument("--reference-device", default="cpu")
    parser.add_argument("--reference-autocast", nargs="+", default=["none"], choices=["none", "bfloat16", "float16"],
                        help="time the reference in float32 (none) and/or under torch.autocast to this type; "
                        "a mixed_<type> configuration is also compared with the reference autocast to <type>")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--one-process", action="store_true",
                        help="run all jobs of a backend in one process (saves start-up; peak memory is then cumulative)")
    parser.add_argument("--job-timeout", type=float, default=900)
    parser.add_argument("--time-budget", type=float, default=None, help="start no new job after this many seconds")
    parser.add_argument("--hard-limit", type=float, default=None,
                        help="stop any worker still running after this many seconds (its finished jobs are kept)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 px images, 2 steps, 1 repeat")
    parser.add_argument("--out", default="train_speed.json")
    parser.add_argument("--markdown", default="train_speed.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models = [f"{m.partition(':')[0]}:64" for m in args.models]
        args.reference_size, args.steps, args.epochs, args.repeats, args.latency_calls = 64, 2, 1, 1, 2
        args.warmup_steps = 1
    args.backends = args.backends or installed_backends()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    started = time.perf_counter()
    references, jobs = plan(args)
    if args.time_budget:  # a worker running several jobs skips those it cannot start in time
        jobs = [{**job, "deadline": time.time() + args.time_budget} for job in jobs]
    info = machine()
    print(f"machine: {info}", flush=True)
    measurements = []
    for repeat in range(args.repeats):
        if args.time_budget and time.perf_counter() - started > args.time_budget:
            print(f"time budget of {args.time_budget:.0f} s spent: no repeat {repeat + 1}", flush=True)
            break
        print(f"repeat {repeat + 1} of {args.repeats}", flush=True)
        reference = {} if args.no_reference else {
            (r["job"]["batch_size"], r["job"].get("autocast")): r
            for r in run_subprocess(references, None, remaining(args, started))}
        for ref in reference.values():
            ref["repeat"] = repeat
        if args.one_process:  # one process per backend and environment
            by_process: dict[tuple, list[dict]] = {}
            for job in jobs:
                by_process.setdefault((job["backend"], json.dumps(job["env"])), []).append(job)
            groups = list(by_process.values())
        else:
            groups = [[j] for j in jobs]
        for group in groups:
            if args.time_budget and time.perf_counter() - started > args.time_budget:
                print(f"time budget spent: skipped {', '.join(label(j) for j in group)}", flush=True)
                continue
            for result in run_subprocess(group, group[0]["backend"], remaining(args, started)):
                batch_size, policy = result["job"]["batch_size"], result["job"]["mixed_precision"]
                ref = reference.get((batch_size, None))
                result["reference"] = ref if ref and ref.get("ok") else None
                like = reference.get((batch_size, policy.removeprefix("mixed_"))) if policy else None
                result["reference_like"] = like if like and like.get("ok") else None  # autocast to the same type
                result["repeat"] = repeat
                measurements.append(result)
        measurements += reference.values()
        if args.out:  # keep what is measured so far
            write(args, info, measurements, started)
    rows = write(args, info, measurements, started)
    print(results_table(rows, args.epoch_images), flush=True)


def remaining(args, started: float) -> float:
    """Seconds a worker may run: ``--job-timeout``, cut to what is left of ``--hard-limit``."""
    if args.hard_limit:
        return min(args.job_timeout, args.hard_limit - (time.perf_counter() - started))
    return args.job_timeout


def write(args, info: dict, measurements: list[dict], started: float) -> list[dict]:
    ordered = sorted(measurements, key=lambda m: m["job"]["kind"] != "reference")
    rows = summarise(ordered, args.epoch_images)
    info = {**info, "load_average_end": os.getloadavg(), "seconds": time.perf_counter() - started}
    arguments = {k: v for k, v in vars(args).items() if k != "worker"}
    write_results(args.out, {"machine": info, "arguments": arguments, "summary": rows, "measurements": measurements},
                  args.markdown, results_table(rows, args.epoch_images))
    return rows


if __name__ == "__main__":
    main()
