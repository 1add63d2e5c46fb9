"""The ``covidxray`` command: parses arguments, then calls library functions.

User mistakes (a bad path, an unreadable image, an unknown label) end with one line on
stderr and exit status 2; nothing already written is removed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

import covidxray
from covidxray.errors import CovidXrayError
from covidxray.labels import TASKS

log = logging.getLogger("covidxray")


def build_parser() -> argparse.ArgumentParser:
    from covidxray.config import MIXED_PRECISION_POLICIES, TrainConfig
    from covidxray.models import DEFAULT_MODEL, list_models
    from covidxray.shortcut import DEFAULT_FRACTION

    def default(name: str):
        return TrainConfig.__dataclass_fields__[name].default

    parser = argparse.ArgumentParser(
        prog="covidxray",
        description="Train, evaluate and run chest X-ray classifiers (COVID-19, pneumonia). "
        "For research and teaching only; never for diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"covidxray {covidxray.__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_training_options(command, out_help: str, required: bool = True):
        command.add_argument("--data", required=required, action="append",
                             help="class folders, a CSV manifest (path,label[,patient_id,source]) or an ieee8023 folder; "
                                  "repeat to combine datasets (an image they share is counted once); "
                                  "or one shard folder written by covidxray data shard (streamed from disk)")
        command.add_argument("--task", choices=list(TASKS), default=default("task"))
        command.add_argument("--out", required=required, help=out_help)
        command.add_argument("--model", default=DEFAULT_MODEL, choices=list_models())
        command.add_argument("--epochs", type=int, default=default("epochs"), help="epochs (the learning rate decays to zero at the last; early stopping may end sooner)")
        command.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the model's own)")
        command.add_argument("--seed", type=int, default=default("seed"))
        command.add_argument("--batch-size", type=int, default=default("batch_size"))
        command.add_argument("--learning-rate", type=float, default=default("learning_rate"), help="peak rate of Adam (warm-up, then cosine decay)")
        command.add_argument("--patience", type=int, default=default("patience"), help="stop after this many epochs without better validation accuracy, watched from the middle of training on")
        command.add_argument("--weights", default=default("weights"), help="none, imagenet (keras.applications models) or a weights file")
        command.add_argument("--val-fraction", type=float, default=default("val_fraction"))
        command.add_argument("--group-by", choices=("patient", "none"), default=default("group_by"),
                             help="patient (default): no patient in two splits; none: image-level, as most published results (inflated)")
        command.add_argument("--target-sensitivity", type=float, default=None,
                             help="choose the COVID decision threshold on validation data for this sensitivity, e.g. 0.95")
        command.add_argument("--no-augment", dest="augment", action="store_false", help="train without augmentation")
        command.add_argument("--flip", action="store_true", help="add horizontal flips to the augmentation")
        command.add_argument("--no-class-weights", dest="class_weights", action="store_false")
        command.add_argument("--mixed-precision", choices=MIXED_PRECISION_POLICIES, default=None,
                             help="compute in 16-bit floats, keep weights in float32 (faster on GPUs, slower on most CPUs)")
        command.add_argument("--steps-per-execution", type=int, default=default("steps_per_execution"),
                             help="training steps per compiled call (more: less Python overhead per step, for fast GPUs)")
        command.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/covidxray)")
        command.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")

    train = commands.add_parser("train", help="train a model and write a run directory with its report")
    add_training_options(train, "run directory to write", required=False)
    train.add_argument("--test-fraction", type=float, default=default("test_fraction"))
    train.add_argument("--blank-lungs", type=float, default=default("blank_lungs"), metavar="FRACTION",
                       help="blank this central fraction of every image (the shortcut probe; see covidxray probe)")
    train.add_argument("--distribute", choices=("none", "data-parallel"), default=default("distribute"),
                       help="data-parallel: split each batch over several devices (JAX backend: KERAS_BACKEND=jax)")
    train.add_argument("--devices", type=int, default=None, help="devices for --distribute data-parallel (default: all visible)")
    train.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue an interrupted run from its last finished epoch, with its own settings (config.json)")
    train.set_defaults(handler=run_train, parser=train)

    cv = commands.add_parser("cv", help="k-fold cross-validation: per-fold, mean +- sd and pooled metrics")
    add_training_options(cv, "folder for cv.json, cv.md and one run directory per fold")
    cv.add_argument("--folds", type=int, default=5)
    cv.set_defaults(handler=run_cv)

    probe = commands.add_parser("probe", help="shortcut probe: train on images with the lung field blanked out")
    add_training_options(probe, "run directory to write")
    probe.add_argument("--test-fraction", type=float, default=default("test_fraction"))
    probe.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                       help=f"side of the blanked central square, as a fraction of the image (default {DEFAULT_FRACTION})")
    probe.set_defaults(handler=run_probe)

    evaluate = commands.add_parser("evaluate", help="evaluate a trained run on a labelled dataset")
    evaluate.add_argument("--run", required=True, help="run directory written by covidxray train")
    evaluate.add_argument("--data", required=True, action="append", help="labelled dataset(s), as for train")
    evaluate.add_argument("--out", default=None, help="write the metrics to this JSON file")
    evaluate.add_argument("--cache-dir", default=None)
    evaluate.add_argument("--per-source", action="store_true", help="require a breakdown per source (fails on one source)")
    evaluate.add_argument("--include-seen", action="store_true",
                          help="keep images the run trained or validated on (left out by default)")
    evaluate.set_defaults(handler=run_evaluate)

    predict = commands.add_parser("predict", help="class probabilities for image files or folders")
    predict.add_argument("--run", default=None,
                         help="run directory written by covidxray train (default: the model shipped with covidxray; "
                              "see its MODEL_CARD.md)")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="PNG, JPEG or DICOM files, or folders of them")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table")
    predict.add_argument("--heatmaps", metavar="DIR", default=None,
                         help="write a Grad-CAM overlay PNG per image into this folder (a heatmap is not proof of what the model uses)")
    predict.add_argument("--engine", choices=("keras", "onnxruntime"), default="keras",
                         help="run model.keras with Keras, or the run's ONNX export (covidxray export) with ONNX Runtime")
    predict.set_defaults(handler=run_predict)

    serve = commands.add_parser("serve", help="a local web page: upload an X-ray, see probabilities and a heatmap")
    serve.add_argument("--run", default=None, help="run directory written by covidxray train")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=32.0, help="largest upload accepted (default 32)")
    serve.set_defaults(handler=run_serve)

    export = commands.add_parser("export", help="export a trained run's inference model (ONNX or TensorFlow SavedModel)")
    export.add_argument("--run", required=True, help="run directory written by covidxray train")
    export.add_argument("--format", choices=("onnx", "savedmodel"), default="onnx",
                        help="onnx (any backend with its converter: pip install 'covidxray[onnx]') or savedmodel (TensorFlow backend)")
    export.add_argument("--out", default=None, help="where to write it (default: RUN/model.onnx or RUN/saved_model)")
    export.set_defaults(handler=run_export)

    models = commands.add_parser("models", help="list the models create_model knows")
    models.set_defaults(handler=run_models)

    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    download = data.add_parser("download", help="download a public dataset and lay it out for training")
    download.add_argument("name", help="dataset name, e.g. darkcovidnet")
    download.add_argument("--dest", default="data", help="folder to put it in (default ./data)")
    download.add_argument("--url", default=None, help="download from this address instead (a mirror)")
    download.set_defaults(handler=run_download)
    shard = data.add_parser("shard", help="decode a dataset once into shard files, for datasets larger than memory")
    shard.add_argument("--data", required=True, action="append",
                       help="class folders, a CSV manifest or an ieee8023 folder; repeat to combine datasets")
    shard.add_argument("--out", required=True, help="shard folder to write (then: covidxray train --data SHARD_DIR)")
    shard.add_argument("--image-size", type=int, required=True, help="side in pixels the images are resized to")
    shard.add_argument("--shard-size", type=int, default=None, help="images per shard file (default 2048)")
    shard.add_argument("--overwrite", action="store_true", help="replace an earlier shard folder in --out")
    shard.set_defaults(handler=run_shard)
    return parser


#: ``train`` options that set a TrainConfig field of the same name (``--resume`` checks them against the run's).
CONFIG_OPTIONS = ("data", "task", "model", "image_size", "weights", "epochs", "batch_size", "learning_rate", "patience",
                  "class_weights", "augment", "flip", "val_fraction", "test_fraction", "seed", "cache_dir", "group_by",
                  "target_sensitivity", "mixed_precision", "steps_per_execution", "blank_lungs", "distribute", "devices")


def config_from(args, **overrides):
    from covidxray.config import TrainConfig

    return TrainConfig(
        data=args.data if len(args.data) > 1 else args.data[0], task=args.task, model=args.model,
        image_size=args.image_size, weights=args.weights, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, patience=args.patience, class_weights=args.class_weights,
        augment=args.augment, flip=args.flip, val_fraction=args.val_fraction,
        test_fraction=getattr(args, "test_fraction", TrainConfig.test_fraction), seed=args.seed,
        cache_dir=args.cache_dir, group_by=args.group_by, target_sensitivity=args.target_sensitivity,
        mixed_precision=args.mixed_precision, steps_per_execution=args.steps_per_execution, **overrides,
    )


def _verbosity(args) -> int:
    return 0 if args.quiet else (1 if sys.stdout.isatty() else 2)


def run_train(args) -> int:
    from covidxray.train import train

    if args.resume:
        config, args.out = _resumed_config(args), args.resume
    else:
        missing = [f"--{name}" for name in ("data", "out") if getattr(args, name) is None]
        if missing:
            args.parser.error(f"the following arguments are required: {', '.join(missing)} (or --resume RUN_DIR)")
        config = config_from(args, blank_lungs=args.blank_lungs, distribute=args.distribute, devices=args.devices)
    metrics = train(config, args.out, overwrite=args.overwrite, resume=bool(args.resume), verbose=_verbosity(args),
                    progress=False if args.quiet else None)
    print_run_summary(metrics)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def print_run_summary(metrics: dict) -> None:
    for split in ("train", "validation", "test"):
        part = metrics[split]
        low, high = part.get("intervals", {}).get("accuracy", (None, None))
        ci = f" [95% CI {low:.3f}-{high:.3f}]" if low is not None else ""
        print(f"{split:>10}: accuracy {part['accuracy']:.4f}{ci}  loss {part['loss']:.4f}  ({part['n']} images)")
    covid = metrics["test"].get("covid")
    if covid:
        print(f"{'covid':>10}: sensitivity {_fmt(covid['sensitivity'])}  specificity {_fmt(covid['specificity'])}  AUC {_fmt(covid['auc'])}")
    if metrics["run"].get("confounding"):
        print(f"warning: {metrics['run']['confounding']}", file=sys.stderr)


def run_cv(args) -> int:
    from covidxray.cv import CV_REPORT, cross_validate

    result = cross_validate(config_from(args), args.out, args.folds, overwrite=args.overwrite,
                            verbose=0 if args.quiet else 2,
                            progress=False if args.quiet else None)
    for fold in result["per_fold"]:
        print(f"fold {fold['fold']}: accuracy {fold['accuracy']:.4f}  loss {fold['loss']:.4f}  ({fold['images']} images)")
    mean, sd, pooled = result["mean"], result["sd"], result["pooled"]
    low, high = pooled["intervals"]["accuracy"]
    print(f"mean accuracy {mean['accuracy']:.4f} +- {sd['accuracy']:.4f}; pooled {pooled['accuracy']:.4f} "
          f"[95% CI {low:.3f}-{high:.3f}] ({'patient-grouped' if result['protocol']['group_by'] == 'patient' else 'image-level'}, "
          f"{result['protocol']['folds']} folds)")
    print(f"report: {Path(args.out) / CV_REPORT}")
    return 0


def run_probe(args) -> int:
    from covidxray.shortcut import chance_accuracy
    from covidxray.train import train

    metrics = train(config_from(args, blank_lungs=args.fraction), args.out, overwrite=args.overwrite,
                    verbose=_verbosity(args), progress=False if args.quiet else None)
    test = metrics["test"]
    chance = chance_accuracy(np.repeat(np.arange(len(test["classes"])), [c["support"] for c in test["per_class"].values()]))
    print_run_summary(metrics)
    print(f"shortcut probe: with the central {args.fraction:.0%} of every image blanked, test accuracy is "
          f"{test['accuracy']:.1%} against {chance:.1%} for always answering the commonest class. "
          "Well above chance means the model can tell the classes apart without the lungs: the data lets it "
          "learn the source (markers, borders, exposure) instead of the disease.")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _resumed_config(args):
    """The run's own settings; any option given that contradicts them is an error (--cache-dir may change)."""
    from dataclasses import replace

    from covidxray.backup import check_resumable
    from covidxray.rundir import RunDir

    run = RunDir(args.resume)
    if args.overwrite or (args.out is not None and Path(args.out).resolve() != run.path.resolve()):
        raise CovidXrayError(f"--resume {run.path} continues that run in place; drop --out and --overwrite")
    check_resumable(run)
    saved = run.load_config()
    given = {name: getattr(args, name) for name in CONFIG_OPTIONS
             if getattr(args, name) != args.parser.get_default(name) and name != "cache_dir"}
    if given.get("data") is not None:
        data = [str(Path(d).resolve()) for d in given["data"]]
        saved_data = [saved.data] if isinstance(saved.data, str) else saved.data
        if data == [str(Path(d).resolve()) for d in saved_data]:
            given.pop("data")
        else:
            given["data"] = data[0] if len(data) == 1 else data
    conflicts = [f"--{name.replace('_', '-')} {value} (the run has {getattr(saved, name)})"
                 for name, value in given.items() if value != getattr(saved, name)]
    if conflicts:
        raise CovidXrayError(f"{run.file('config.json')}: --resume takes the run's own settings, but "
                             f"{'; '.join(conflicts)}; drop these options or start a new run")
    return replace(saved, cache_dir=args.cache_dir) if args.cache_dir else saved


def run_evaluate(args) -> int:
    from covidxray.evaluate import evaluate_run
    from covidxray.files import atomic_write_text

    data = args.data if len(args.data) > 1 else args.data[0]
    metrics = evaluate_run(args.run, data, cache_dir=args.cache_dir, progress=False if args.quiet else None,
                           per_source=args.per_source, include_seen=args.include_seen)
    text = json.dumps(metrics, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    covid = metrics.get("covid") or {}
    print(f"accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  ({metrics['n']} images)"
          + (f"  covid sensitivity {_fmt(covid['sensitivity'])} specificity {_fmt(covid['specificity'])} AUC {_fmt(covid['auc'])}" if covid else ""))
    for source, part in metrics.get("per_source", {}).items():
        print(f"  {source}: accuracy {part['accuracy']:.4f} ({part['n']} images)")
    if metrics.get("confounding"):
        print(f"warning: {metrics['confounding']}", file=sys.stderr)
    return 0


def run_predict(args) -> int:
    from covidxray.evaluate import load_calibration
    from covidxray.predict import expand_paths, heatmap_folder, predict_files
    from covidxray.pretrained import default_run_dir
    from covidxray.rundir import RunDir

    paths = expand_paths(args.paths)
    if args.heatmaps:
        if args.engine != "keras":
            raise CovidXrayError("--heatmaps needs the Keras model (Grad-CAM takes gradients); drop --engine onnxruntime")
        heatmap_folder(args.heatmaps)
    run = RunDir(args.run if args.run else default_run_dir())
    if args.engine == "onnxruntime":
        from covidxray.export import load_onnx

        model = load_onnx(run.path)  # carries its class names and input size
        classes, image_size = model.classes, model.image_size
    else:
        config = run.load_config()
        model = run.load_model()
        classes, image_size = config.classes, config.image_size
    results, failures = predict_files(model, paths, classes, image_size, progress=False if args.quiet else None,
                                      calibration=load_calibration(run), heatmaps=args.heatmaps)
    print(format_predictions(results, classes, args.format), end="")
    for message in failures.values():
        print(f"covidxray: skipped {message}", file=sys.stderr)
    return 1 if failures else 0


def format_predictions(results: list[dict], classes, fmt: str) -> str:
    """Predictions as an aligned table, JSON list or CSV."""
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    rows = [[r["path"], r["label"], *(f"{r['probabilities'][c]:.4f}" for c in classes)] for r in results]
    header = ["path", "label", *(f"p_{c}" for c in classes)]
    if any("heatmap" in r for r in results):
        header.append("heatmap")
        rows = [[*row, r.get("heatmap", "")] for row, r in zip(rows, results)]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([header, *rows])
        return buffer.getvalue()
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() + "\n" for row in [header, *rows])


def run_serve(args) -> int:
    from covidxray.serve import serve

    serve(args.run, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, quiet=args.quiet)
    return 0


def run_export(args) -> int:
    from covidxray.export import export_run

    print(f"exported: {export_run(args.run, args.format, args.out)}")
    return 0


def run_models(args) -> int:
    from covidxray.models import DEFAULT_MODEL, MODELS

    for name in sorted(MODELS):
        spec = MODELS[name]
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:<20} {spec.image_size:>4}px  {spec.description}{mark}")
    return 0


def run_download(args) -> int:
    from covidxray.data.download import download_dataset

    folder = download_dataset(args.name, args.dest, url=args.url, progress=False if args.quiet else None)
    print(f"{args.name}: ready in {folder}")
    return 0


def run_shard(args) -> int:
    from covidxray.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from covidxray.data.shards import DEFAULT_SHARD_SIZE, write_shards

    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise CovidXrayError(f"--image-size must lie between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels")
    meta = write_shards(args.data, args.out, args.image_size, shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
                        overwrite=args.overwrite, progress=False if args.quiet else None)
    print(f"{meta['images']} images at {meta['image_size']}px in {len(meta['shards'])} shard(s): {args.out}"
          + (f" ({len(meta['skipped'])} unreadable file(s) skipped)" if meta["skipped"] else ""))
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines; set it to 0 to see them
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="covidxray: %(message)s")
    try:
        return args.handler(args)
    except CovidXrayError as error:
        print(f"covidxray: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a folder that is a file, no permission, a full disk, ...
        where = f"{error.filename}: " if error.filename else ""
        print(f"covidxray: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covidxray: interrupted; files already written are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
