"""Predictions: class probabilities for arrays, files and folders."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from covidxray.data.images import decode_resized, is_image_path
from covidxray.errors import CovidXrayError, ImageReadError
from covidxray.inference.familiarity import FAMILIARITY, UNLIKE
from covidxray.progress import progress_bar

log = logging.getLogger(__name__)

PREDICT_BATCH = 64
#: Images converted to float32 at a time: bounds memory for large (or shard-backed) arrays.
PREDICT_CHUNK = 4096
#: Images whose Grad-CAM maps are held in memory at once.
HEATMAP_CHUNK = 256
#: The most test-time augmentation views (``--tta``): each view is one more pass of the model over
#: every image (1000 views of one image took 56 s), and past a few tens the average no longer moves.
MAX_TTA = 32


def predict_arrays(model, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Class probabilities ``(n, classes)`` for ``(n, size, size, 1)`` images in [0, 255].

    ``images`` may be any array-like with slicing and ``astype`` (a shard array is read
    chunk by chunk). Each batch goes through the model's one compiled predict function
    (``predict_on_batch``): ``model.predict`` builds a data pipeline per call, which cost a
    single image about 50 ms on a CPU (docs/speed.md). Under a data-parallel distribution
    ``model.predict`` spreads the batches, each padded to split evenly over the devices; the
    padding's outputs are dropped.
    """
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    import keras

    devices = device_count(keras.distribution.distribution())
    batch_size = -(-batch_size // devices) * devices
    parts = []
    for start in range(0, len(images), PREDICT_CHUNK):
        chunk = images[start:start + PREDICT_CHUNK].astype(np.float32)
        if devices == 1:
            parts += [np.asarray(model.predict_on_batch(chunk[i:i + batch_size]))
                      for i in range(0, len(chunk), batch_size)]
            continue
        count, pad = len(chunk), -len(chunk) % devices
        if pad:
            chunk = np.pad(chunk, [(0, pad)] + [(0, 0)] * (chunk.ndim - 1))
        parts.append(np.asarray(model.predict(chunk, batch_size=batch_size, verbose=0))[:count])
    return np.concatenate(parts)


def predict_augmented(model, images: np.ndarray, views: int, *, seed: int = 0,
                      batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Test-time augmentation: class probabilities ``(n, classes)`` averaged over each image as it
    is and ``views - 1`` draws of the model's own training augmentation (its ``augmentation``
    layer, applied as in training; rotation, zoom, shift and contrast by default).

    The draws come from a copy of that layer seeded with ``seed``, so the same call gives the same
    probabilities and the model's own layer is left as it was. ``views=1`` is :func:`predict_arrays`.
    """
    check_tta(views)
    probabilities = predict_arrays(model, images, batch_size)
    if views == 1 or len(images) == 0:
        return probabilities
    augment = augmentation_copy(model, seed)
    total = probabilities.astype(np.float64)
    for _ in range(views - 1):
        for start in range(0, len(images), PREDICT_CHUNK):
            chunk = images[start:start + PREDICT_CHUNK].astype(np.float32)
            drawn = np.concatenate([np.asarray(augment(chunk[i:i + batch_size], training=True), dtype=np.float32)
                                    for i in range(0, len(chunk), batch_size)])
            total[start:start + len(chunk)] += predict_arrays(model, drawn, batch_size)
    return (total / views).astype(np.float32)


def check_tta(views, engine: str = "keras") -> None:
    """Raise unless ``views`` (``--tta``) is a whole number from 1 to :data:`MAX_TTA`, and 1 for ONNX Runtime."""
    if isinstance(views, bool) or not isinstance(views, int | np.integer) or not 1 <= views <= MAX_TTA:
        raise CovidXrayError(f"--tta must be a whole number of views from 1 (none) to {MAX_TTA}; got {views!r}")
    if views > 1 and engine != "keras":
        raise CovidXrayError("--tta needs the Keras model (it draws from the model's augmentation layer); "
                             "drop --engine onnxruntime or use --tta 1")


def augmentation_copy(model, seed: int):
    """A fresh copy of ``model``'s ``augmentation`` layer whose random layers draw from ``seed``."""
    import keras

    try:
        layer = model.get_layer("augmentation")
    except ValueError:
        raise CovidXrayError(f"model {model.name!r} has no augmentation layer (trained with --no-augment): "
                             "test-time augmentation draws from it; use --tta 1") from None
    config = layer.get_config()
    for i, inner in enumerate(config["layers"]):
        if "seed" in inner["config"]:
            inner["config"]["seed"] = seed + i
    return keras.Sequential.from_config(config)


def device_count(distribution) -> int:
    """The number of devices a ``keras.distribution`` spreads over (1 for None)."""
    return 1 if distribution is None else int(distribution.device_mesh.devices.size)


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


def write_heatmaps(model, images: np.ndarray, paths, class_indices, folder, *, lungs=None,
                   progress: bool | None = None, names=None) -> list[str]:
    """Grad-CAM overlays (one PNG per image, named after its file) in ``folder``; returns their paths.

    ``lungs``: per image a lung mask (same size) whose outline is drawn, or None. ``names``: the
    file names to write (default :func:`heatmap_names` of ``paths``)."""
    from PIL import Image

    from covidxray.files import atomic_save
    from covidxray.inference.heatmaps import grad_cam, overlay

    folder = heatmap_folder(folder)
    targets = [folder / name for name in (heatmap_names(paths) if names is None else names)]
    outlines = [None] * len(images) if lungs is None else lungs
    with progress_bar(total=len(images), desc="heatmaps", unit="img", progress=progress) as bar:
        for start in range(0, len(images), HEATMAP_CHUNK):  # in chunks: n maps at full size can be large
            chunk = slice(start, start + HEATMAP_CHUNK)
            for image, heatmap, outline, target in zip(images[chunk], grad_cam(model, images[chunk], class_indices[chunk]),
                                                       outlines[chunk], targets[chunk]):
                picture = Image.fromarray(overlay(image, heatmap, outline=outline))
                atomic_save(target, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
                bar.update()
    return [str(target) for target in targets]


def predict_files(predictor, paths, *, progress: bool | None = None, heatmaps=None):
    """Predict every file with ``predictor`` (:class:`~covidxray.inference.predictor.Predictor`);
    returns (results, failures).

    ``results`` is a list of ``{"path", "label", "probabilities": {class: p}}`` (probabilities
    calibrated, the label decided by the run's rule), plus ``"unlike_training"`` (True when the
    image looks unlike the run's training data; only where the run can tell), plus ``"heatmap"`` (the path of its Grad-CAM
    overlay, with the lung outline) when ``heatmaps`` names a folder, and ``"lungs"`` (the lung
    mask's flag: ``ok``, or why the whole image was used) for a run trained with ``--lungs
    crop|mask``; ``failures`` maps each unreadable file to its error.
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
        loaded = list(progress_bar(pool.map(load, paths), total=len(paths), desc="reading", unit="img",
                                   progress=progress))
    failures = {p: str(x) for p, x in zip(paths, loaded) if isinstance(x, ImageReadError)}
    good = [(p, x) for p, x in zip(paths, loaded) if not isinstance(x, ImageReadError)]
    if not good:
        return [], failures
    want_lungs = heatmaps is not None and predictor.engine == "keras"
    inputs = predictor.prepare(np.stack([x[0] for _, x in good]), [x[1] for _, x in good], lungs=want_lungs)
    images = inputs.images
    probabilities, decided = predictor.predict(images)
    results = [
        {"path": path, "label": classes[int(label)],
         "probabilities": {c: round(float(p), 6) for c, p in zip(classes, row)}}
        for (path, _), row, label in zip(good, probabilities, decided)
    ]
    unlike = predictor.unlike_training(images)
    if unlike is None and predictor.engine != "keras" and (Path(predictor.path) / FAMILIARITY).is_file():
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
    if predictor.preprocessing.lungs != "none":
        for result, quality in zip(results, inputs.quality):
            result["lungs"] = quality
        for i in inputs.fallback:
            log.warning("%s: lungs not found reliably (%s); the whole image was used", results[i]["path"],
                        inputs.quality[i])
    if heatmaps is not None:
        if predictor.engine != "keras":
            raise CovidXrayError("heatmaps need the Keras model (Grad-CAM takes gradients); drop --engine onnxruntime")
        fallback = set(inputs.fallback)
        outlines = None if inputs.lungs is None else [
            None if i in fallback else mask for i, mask in enumerate(inputs.lungs)]
        # named from every input, unreadable ones too, as the command checked them before any work
        names = [n for n, x in zip(heatmap_names(paths), loaded) if not isinstance(x, ImageReadError)]
        written = write_heatmaps(predictor.model, images, [p for p, _ in good], decided, heatmaps, lungs=outlines,
                                 progress=progress, names=names)
        for result, heatmap in zip(results, written):
            result["heatmap"] = heatmap
    return results, failures
