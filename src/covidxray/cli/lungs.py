"""``covidxray lungs``: train a lung segmenter, and segment X-rays with one.

``covidxray lungs train --data DIR [--data DIR ...] --out RUN`` trains the U-Net on lung-mask
datasets (folders with images/ and lung-masks/) and writes a run folder (``--resume RUN`` continues
an interrupted one);
``covidxray lungs segment IMAGE|FOLDER ... --out DIR`` writes a mask and an overlay per image into
DIR and prints each image's lung area fraction, bounding box and quality flag (a table, or JSON
with ``--format json``). Flagged images get a warning on stderr naming the file; unreadable ones
are listed with quality ``unreadable`` and make the exit status 1; the others are still written.
Building these parsers imports no Keras.
"""

from __future__ import annotations

import json
import sys

from covidxray.cli.options import add_config_options, given_settings, resuming
from covidxray.config import LUNGS_TRAIN, LungTrainConfig, Tracking
from covidxray.errors import printable

SEGMENT_RUN_HELP = ("lung segmenter: a folder written by covidxray lungs train, or preset:NAME "
                    "(default: the shipped preset:lungs_unet_jsrt_ieee8023; see its MODEL_CARD.md)")


def add_lungs_commands(commands) -> None:
    """Add ``lungs train`` and ``lungs segment`` to the ``covidxray`` sub-command parsers ``commands``."""
    lungs = commands.add_parser("lungs", help="lung segmentation: train a U-Net, or segment X-rays with one")
    actions = lungs.add_subparsers(dest="lungs_command", required=True, metavar="ACTION")

    train = actions.add_parser("train", help="train a lung segmenter on lung-mask datasets, held-out Dice and IoU per source")
    add_config_options(train, LUNGS_TRAIN, data_required=False, settings=LungTrainConfig)
    add_config_options(train, LUNGS_TRAIN, settings=Tracking)
    train.add_argument("--out", help="run folder to write")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    train.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue an interrupted run from its last finished epoch, with its own settings "
                            "(segmenter.json)")
    train.set_defaults(handler=run_lungs_train, parser=train, check=check_lungs_train)

    segment = actions.add_parser("segment", help="lung masks, overlays, area, box and a quality flag per image")
    segment.add_argument("paths", nargs="+", metavar="PATH", help="PNG, JPEG or DICOM files, or folders of them")
    segment.add_argument("--out", required=True, metavar="DIR",
                         help="folder for NAME_lungs.png (mask: 255 lung, 0 elsewhere) and NAME_overlay.png")
    segment.add_argument("--format", choices=("table", "json"), default="table")
    segment.add_argument("--run", default=None, help=SEGMENT_RUN_HELP)
    segment.add_argument("--cache-dir", default=None, help="mask cache (default ~/.cache/covidxray/lungs)")
    segment.add_argument("--no-cache", dest="cache", action="store_false", help="neither read nor write cached masks")
    segment.add_argument("--overwrite", action="store_true", help="replace masks and overlays that exist in --out "
                         "(never an input)")
    segment.set_defaults(handler=run_lungs_segment, check=check_lungs_segment)


def check_lungs_train(args) -> None:
    """Before the backend loads: --resume alone, or --data and --out; the settings' bounds; --track."""
    from covidxray.training.tracking import check_tracking

    check_tracking(_track(args))
    if resuming(args):
        return
    LungTrainConfig(**given_settings(args, LungTrainConfig)).check()


def run_lungs_train(args) -> int:
    from covidxray.training.segmentation import resume_segmenter, train_segmenter

    verbose = 0 if getattr(args, "quiet", False) else (1 if sys.stdout.isatty() else 2)
    if args.resume:
        args.out = args.resume
        metrics = resume_segmenter(args.resume, verbose=verbose, track=_track(args),
                                   **given_settings(args, LungTrainConfig))
    else:
        config = LungTrainConfig(**given_settings(args, LungTrainConfig))
        metrics = train_segmenter(config, args.out, overwrite=args.overwrite, verbose=verbose, track=_track(args))
    print(format_segmentation_metrics(metrics["test"]), end="")
    print(f"run: {args.out} (metrics.json, failures/)")
    return 0


def _track(args) -> str:
    return Tracking(**given_settings(args, Tracking)).track


def check_lungs_segment(args) -> None:
    """Before any work (the model loads): the inputs exist, --out is a folder that can be written, and no
    mask or overlay would replace an input or, without --overwrite, a file that exists."""
    from covidxray.files import check_output_folder
    from covidxray.inference.lungs import output_names
    from covidxray.inference.predict import expand_paths

    args.expanded = expand_paths(args.paths)
    check_output_folder(args.out, "--out", [name for pair in output_names(args.expanded) for name in pair],
                        overwrite=args.overwrite, inputs=args.expanded)


def run_lungs_segment(args) -> int:
    from covidxray.inference.lungs import UNREADABLE, load_segmenter
    from covidxray.inference.predict import expand_paths

    paths = args.expanded if hasattr(args, "expanded") else expand_paths(args.paths)
    segmenter = load_segmenter(args.run)
    results = segmenter.segment_files(paths, args.out, cache_dir=args.cache_dir, use_cache=args.cache)
    print(format_lungs(results, args.format), end="")
    for result in results:
        if result["warning"]:
            label = "skipped" if result["quality"] == UNREADABLE else "warning"
            print(printable(f"covidxray: {label}: {result['warning']}"), file=sys.stderr)
    return 1 if any(r["quality"] == UNREADABLE for r in results) else 0


def format_lungs(results: list[dict], fmt: str) -> str:
    """Segmentation results as JSON (a list of objects) or an aligned table."""
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    header = ["path", "quality", "lung_area", "bbox"]
    rows = [[printable(r["path"]), r["quality"], "" if r["lung_area_fraction"] is None else f"{r['lung_area_fraction']:.3f}",
             "" if r["bbox"] is None else ",".join(map(str, r["bbox"]))] for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n" for row in [header, *rows])


def format_segmentation_metrics(summary: dict) -> str:
    """One line per source: held-out Dice and IoU (mean, median, worst) and the flags."""
    lines = []
    for source, part in summary.items():
        if source == "all":
            lines.append(f"{'all':>10}: Dice {part['dice']:.4f}  IoU {part['iou']:.4f}  ({part['n']} held-out images)")
            continue
        flags = ", ".join(f"{k} {v}" for k, v in sorted(part["quality"].items()))
        lines.append(f"{source:>10}: Dice {part['dice']:.4f} (median {part['dice_median']:.4f}, worst "
                     f"{part['dice_min']:.4f})  IoU {part['iou']:.4f}  ({part['n']} images; {flags})")
    return "\n".join(lines) + "\n"

