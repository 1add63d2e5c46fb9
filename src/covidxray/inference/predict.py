"""Predictions: class probabilities for arrays, files and folders."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from covidxray.data.images import decode_resized, is_image_path
from covidxray.errors import CovidXrayError, ImageReadError
from covidxray.inference.engines import FEATURES, GRADIENTS
from covidxray.inference.familiarity import UNLIKE, UNLIKE_SHORT
from covidxray.progress import progress_bar
from covidxray.rundir import FAMILIARITY, SPLIT

log = logging.getLogger(__name__)

#: Images whose Grad-CAM maps are held in memory at once.
HEATMAP_CHUNK = 256
#: Two classes within this many probability points of each other are a near tie: the answer is
#: reported with ``near_tie`` set, as the model cannot tell them apart (calibrated probabilities).
NEAR_TIE = 0.10
SEEN = ("the model trained or validated on this image (same file name or pixels): its probabilities say "
        "nothing about how it does on new X-rays")


def expand_paths(paths) -> list[Path]:
    """Files named, plus the image files inside folders named (recursively, sorted)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p) and not p.name.startswith("."))
        elif path.exists():
            found.append(path)
        else:
            raise CovidXrayError(f"{path}: no such file or folder")
    if not found:
        raise CovidXrayError(f"no image files in {', '.join(map(str, paths))}")
    return found


def output_folder(folder, option: str) -> Path:
    """Check (and create) a folder that ``option`` names for output, before any work is done."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CovidXrayError(f"{folder}: is a file, not a folder; give {option} a folder (it is created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def heatmap_folder(folder) -> Path:
    """Check (and create) the folder for ``--heatmaps`` before any work is done."""
    return output_folder(folder, "--heatmaps")


def heatmap_names(paths) -> list[str]:
    """One PNG name per input file, from its name (``a.png`` -> ``a_gradcam.png``); repeats get ``_2``, ``_3``."""
    names, taken = [], set()
    for path in paths:
        stem, number = f"{Path(path).stem}_gradcam", 1
        name = f"{stem}.png"
        while name.lower() in taken:  # lower: a case-insensitive file system sees A.png as a.png
            number += 1
            name = f"{stem}_{number}.png"
        taken.add(name.lower())
        names.append(name)
    return names


def write_heatmaps(model, images: np.ndarray, paths, class_indices, folder, *, classes, probabilities, lungs=None,
                   boxes=None, crop: bool = False, names=None, notes=None) -> list[str]:
    """Grad-CAM figures (:func:`~covidxray.inference.heatmaps.heatmap_figure`: the whole film, the
    heatmap over what the model saw, the predicted class and its probability, a colour bar and the
    not-for-diagnosis line), one PNG per image, named after its file, in ``folder``; returns their paths.

    ``images``: the model inputs; ``probabilities``: ``(n, classes)``, calibrated. ``lungs``: per image a
    lung mask (the inputs' size) whose outline is drawn, or None. ``boxes``: per image the part of the
    film the input shows (fractions; None: all of it), drawn where ``crop``. ``names``: the file names to
    write (default :func:`heatmap_names` of ``paths``). ``notes``: per image a line under the title, or None.
    Each film is read again from its file, one at a time, and drawn at most
    :data:`~covidxray.inference.heatmaps.FIGURE_SIDE` pixels on its longest side."""
    from covidxray.data.images import read_image
    from covidxray.data.lungviews import FULL
    from covidxray.files import atomic_write_bytes
    from covidxray.inference.heatmaps import figure_png, fit_side, grad_cam, heatmap_figure

    folder = heatmap_folder(folder)
    targets = [folder / name for name in (heatmap_names(paths) if names is None else names)]
    count = len(images)
    outlines = [None] * count if lungs is None else lungs
    boxes = [FULL] * count if boxes is None else boxes
    notes = [None] * count if notes is None else notes
    with progress_bar(total=count, desc="heatmaps", unit="img") as bar:
        for start in range(0, count, HEATMAP_CHUNK):  # in chunks: n maps at full size can be large
            chunk = slice(start, start + HEATMAP_CHUNK)
            maps = grad_cam(model, images[chunk], class_indices[chunk])
            for i, heatmap in zip(range(start, min(start + HEATMAP_CHUNK, count)), maps):
                try:
                    picture, box = fit_side(read_image(paths[i])), boxes[i]
                except ImageReadError:  # changed since it was read: the model's input alone
                    picture, box = images[i][..., 0], FULL
                label = int(class_indices[i])
                figure = heatmap_figure(picture, heatmap, label=classes[label], probability=float(probabilities[i, label]),
                                        box=box, outline=outlines[i], crop=crop, name=Path(paths[i]).name, note=notes[i])
                atomic_write_bytes(targets[i], figure_png(figure))
                bar.update()
    return [str(target) for target in targets]


def heatmap_note(result: dict) -> str | None:
    """The flags of a prediction in a few words, for its heatmap's title (None: none)."""
    flags = [text for key, text in (("unlike_training", UNLIKE_SHORT.upper()), ("near_tie", "near tie"),
                                    ("seen_in_training", "seen in training")) if result.get(key)]
    return "; ".join(flags) or None


def predict_files(predictor, paths, *, heatmaps=None):
    """Predict every file with ``predictor`` (:class:`~covidxray.inference.predictor.Predictor`);
    returns (results, failures).

    ``results`` is a list of ``{"path", "label", "probabilities": {class: p}}`` (probabilities
    calibrated, the label decided by the run's rule, ``"near_tie"``: the top two within
    :data:`NEAR_TIE`), plus ``"seen_in_training"`` (True for an image the run trained or validated on:
    the same original file name or pixels as a row of its ``split.csv``; where the run has one), plus
    ``"unlike_training"`` (True when the
    image looks unlike the run's training data; only where the run can tell), plus ``"heatmap"`` (the path of its Grad-CAM
    figure, :func:`write_heatmaps`) when ``heatmaps`` names a folder, and ``"lungs"`` (the lung
    mask's flag: ``ok``, or why the whole image was used) for a run trained with ``--lungs
    crop``; ``failures`` maps each unreadable file to its error.
    """
    classes = predictor.classes
    side = predictor.decode_side

    def load(path):
        try:
            return decode_resized(path, side)
        except ImageReadError as error:
            return error

    paths = [str(p) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        loaded = list(progress_bar(pool.map(load, paths), total=len(paths), desc="reading", unit="img"))
    failures = {p: str(x) for p, x in zip(paths, loaded) if isinstance(x, ImageReadError)}
    good = [(p, x) for p, x in zip(paths, loaded) if not isinstance(x, ImageReadError)]
    if not good:
        return [], failures
    if heatmaps is not None:
        predictor.engine.require(GRADIENTS, "--heatmaps")
    inputs = predictor.prepare(np.stack([x[0] for _, x in good]), [x[1] for _, x in good], lungs=heatmaps is not None)
    images = inputs.images
    probabilities, decided = predictor.predict(images)
    top_two = np.sort(probabilities, axis=1)[:, -2:] if probabilities.shape[1] > 1 else None
    results = [
        {"path": path, "label": classes[int(label)],
         "probabilities": {c: round(float(p), 6) for c, p in zip(classes, row)},
         "near_tie": bool(top_two is not None and top_two[i, 1] - top_two[i, 0] < NEAR_TIE)}
        for i, ((path, _), row, label) in enumerate(zip(good, probabilities, decided))
    ]
    if (Path(predictor.path) / SPLIT).is_file():
        import pandas as pd

        table = pd.DataFrame({"path": [p for p, _ in good], "original_name": [Path(p).name for p, _ in good],
                              "pixels": [x[1] for _, x in good]})
        for result, flag in zip(results, predictor.seen(table, near=False)):
            result["seen_in_training"] = bool(flag)
            if flag:
                log.warning("%s: %s", result["path"], SEEN)
    unlike = predictor.unlike_training(images, probabilities)
    if unlike is None and not predictor.engine.can(FEATURES) and (Path(predictor.path) / FAMILIARITY).is_file():
        # the run can tell, this engine cannot: the column is there, empty, and the user is told why
        log.info("ONNX Runtime does not check whether images look unlike the run's training data: unlike_training "
                 "is left empty (use --engine keras for it)")
        for result in results:
            result["unlike_training"] = None
    if unlike is not None:
        for result, flag in zip(results, unlike):
            result["unlike_training"] = bool(flag)
            if flag:
                log.warning("%s: %s", result["path"], UNLIKE)
    if predictor.preprocessing.segments:
        for result, quality in zip(results, inputs.quality):
            result["lungs"] = quality
        for i in inputs.fallback:
            log.warning("%s: lungs not found reliably (%s); the whole image was used", results[i]["path"],
                        inputs.quality[i])
    if heatmaps is not None:
        fallback = set(inputs.fallback)
        outlines = None if inputs.lungs is None else [
            None if i in fallback else mask for i, mask in enumerate(inputs.lungs)]
        # named from every input, unreadable ones too, as the command checked them before any work
        names = [n for n, x in zip(heatmap_names(paths), loaded) if not isinstance(x, ImageReadError)]
        written = write_heatmaps(predictor.model, images, [p for p, _ in good], decided, heatmaps, classes=classes,
                                 probabilities=probabilities, lungs=outlines, boxes=inputs.boxes,
                                 crop=predictor.preprocessing.segments, names=names,
                                 notes=[heatmap_note(result) for result in results])
        for result, heatmap in zip(results, written):
            result["heatmap"] = heatmap
    return results, failures
