"""Train a lung segmenter (``covidxray lungs train``) and measure it on held-out patients.

The image/mask pairs of every dataset given (:mod:`covidxray.data.masks`) are split by patient,
stratified by source (70/15/15 by default); the U-Net (:mod:`covidxray.models.unet`) trains on the
training images with random affine maps applied to image and mask together and random gamma, blur
and noise on the image; the epoch with the best validation Dice is kept. The held-out test images
are then segmented as ``covidxray lungs segment`` does it (at their own size, post-processed) and
compared with their masks: Dice and IoU per image, summarised per source, with the worst images
drawn in ``failures/``. The run folder holds ``model.keras``, ``segmenter.json``, ``split.csv``,
``history.csv``, ``metrics.json`` and ``failures/*.png``; every file is written atomically. The fit
is the classifier's run loop (:mod:`covidxray.training.loop`): the best epoch by validation Dice,
optional early stopping (``patience``), TensorBoard, the tracker, and ``backup/`` after every
epoch, from which :func:`resume_segmenter` (``covidxray lungs train --resume RUN``) continues an
interrupted run.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from covidxray import rundir
from covidxray.config import LungTrainConfig
from covidxray.data.masks import load_pairs, mask_table, read_pair, split_masks
from covidxray.errors import DatasetError
from covidxray.inference.lungs import KIND, SEGMENTER, LungSegmenter, model_identity, overlay, read_settings
from covidxray.training.tracking import Tracker, closing, make_tracker

log = logging.getLogger(__name__)

FAILURES = "failures"  # folder: the worst held-out images per source, drawn
WORST_PER_SOURCE = 3


def segmenter_settings(config: LungTrainConfig) -> dict:
    """The contents of ``segmenter.json``: what inference needs, and the training settings."""
    return {"kind": KIND, "image_size": config.image_size, "widths": list(config.widths),
            "threshold": config.threshold, "training": training_settings(config)}


# ---------------------------------------------------------------------------------------------
# Loss and metrics (per image, then averaged)


def soft_dice(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice per image of ``(n, h, w, 1)`` masks and probabilities."""
    from keras import ops

    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    overlap = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    return (2 * overlap + smooth) / (total + smooth)


def dice_bce_loss(y_true, y_pred):
    """Binary cross-entropy plus (1 - soft Dice), per image: the first sharpens every pixel, the
    second weighs the lungs as a whole whatever their share of the image."""
    from keras import ops

    bce = ops.mean(ops.binary_crossentropy(ops.cast(y_true, "float32"), y_pred), axis=(1, 2, 3))
    return bce + 1.0 - soft_dice(y_true, y_pred)


def dice(y_true, y_pred):
    """Dice of the thresholded prediction (0.5), per image: the training log's metric."""
    from keras import ops

    return soft_dice(y_true, ops.cast(y_pred >= 0.5, "float32"), smooth=1e-6)


def dice_iou(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks (1.0 for two empty ones)."""
    overlap = float(np.logical_and(truth, predicted).sum())
    total = float(truth.sum() + predicted.sum())
    union = total - overlap
    if total == 0:
        return 1.0, 1.0
    return 2 * overlap / total, overlap / union


# ---------------------------------------------------------------------------------------------
# Augmentation


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random affine map (rotation +-10 degrees, zoom 0.85-1.2, shift +-6%) applied to a
    ``(size, size)`` image and its mask alike, then gamma 0.6-1.6, blur and noise on the image.

    No horizontal flip: the heart sits on the left, and its notch shapes the left lung.
    """
    from scipy import ndimage

    size = image.shape[0]
    angle = math.radians(rng.uniform(-10, 10))
    scale = math.exp(rng.uniform(math.log(0.85), math.log(1.2)))  # > 1: the lungs look larger
    shift = rng.uniform(-0.06, 0.06, 2) * size
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    matrix = np.array([[cos, -sin], [sin, cos]])  # output (row, col) -> input (row, col)
    centre = np.array([(size - 1) / 2] * 2)
    offset = centre - matrix @ (centre + shift)
    warped = ndimage.affine_transform(image.astype(np.float32), matrix, offset, order=1, mode="constant", cval=0.0)
    warped_mask = ndimage.affine_transform(mask.astype(np.float32), matrix, offset, order=1, mode="constant") >= 0.5
    x = 255.0 * (np.clip(warped, 0, 255) / 255.0) ** math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    if rng.random() < 0.3:
        x = ndimage.gaussian_filter(x, rng.uniform(0.3, 1.2))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(2, 10), x.shape)
    return np.clip(x, 0, 255).astype(np.float32), warped_mask.astype(np.float32)


def pair_batches(images: np.ndarray, masks: np.ndarray, batch_size: int, seed: int, augment: bool):
    """A ``keras.utils.PyDataset`` of shuffled ``(image, mask)`` batches of ``(n, size, size)``
    arrays, whole batches only (one shape per step, so JAX compiles once); augmented
    (:func:`augment_pair`) where ``augment``. ``model.fit(..., shuffle=True)`` also shuffles the order
    in which Keras asks for the batches, with Python's ``random``: the order, the random generator and
    ``random``'s state are a state that a run's backup saves after each epoch (``state()``,
    ``restore(state)``), so that a resumed run draws what the uninterrupted one would have. (Built here
    so that importing this module needs no Keras.)"""
    import keras

    class PairBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(images))

        def __len__(self):
            return max(1, len(images) // batch_size)

        def __getitem__(self, index):
            rows = self.order[index * batch_size:(index + 1) * batch_size]
            if augment:
                pairs = [augment_pair(images[i], masks[i], self.rng) for i in rows]
                x, y = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
            else:
                x, y = images[rows].astype(np.float32), masks[rows].astype(np.float32)
            return x[..., None], y[..., None]

        def on_epoch_end(self):  # Keras calls it before the callbacks' on_epoch_end: the next epoch's order
            self.order = self.rng.permutation(len(images))

        def state(self) -> dict:
            version, internal, gauss = random.getstate()
            return {"order": self.order.tolist(), "rng": self.rng.bit_generator.state,
                    "python_random": [version, list(internal), gauss]}

        def restore(self, state: dict) -> None:
            self.order = np.asarray(state["order"], dtype=self.order.dtype)
            self.rng.bit_generator.state = state["rng"]
            version, internal, gauss = state["python_random"]
            random.setstate((version, tuple(internal), gauss))

    return PairBatches()


# ---------------------------------------------------------------------------------------------
# Training


def train_segmenter(config: LungTrainConfig, out: str | Path, *, overwrite: bool = False, verbose: int = 2,
                    track: str | Tracker = "none") -> dict:
    """Train a lung U-Net on ``config.data`` and write the run folder ``out``; returns its metrics.

    Each finished epoch is backed up in ``out/backup/``: an interrupted run continues with
    :func:`resume_segmenter` (a new one in its folder is refused unless ``overwrite``). ``track``: as
    for :func:`covidxray.training.train.train` (``"mlflow"``, or a tracker the caller closes).
    """
    config.check()
    tracker = make_tracker(track)
    final_run = rundir.RunDir(out)
    final_run.refuse_to_replace(overwrite)
    # Replacing a finished run (--overwrite): the new one is written aside and swapped in once complete.
    replacing = overwrite and final_run.file(rundir.MODEL).exists()
    data = _read_data(config)
    with closing(tracker, track):
        tracker.start(final_run.path.resolve().name, training_settings(config),
                      tags={"covidxray.run_dir": str(final_run.path.resolve())})
        run = final_run.stage() if replacing else final_run
        if not replacing:
            run.create()
            shutil.rmtree(run.file(FAILURES), ignore_errors=True)
        rundir.write_csv(run.file(rundir.SPLIT), data["table"])
        run.write_json(SEGMENTER, segmenter_settings(config))  # first: marks the folder as a segmenter's run
        metrics = _train(config, run, final_run, data, verbose, tracker)
        if replacing:
            _swap_in(final_run, run)
        _log_finished(tracker, final_run, metrics)
    return metrics


def resume_segmenter(run_dir: str | Path, *, verbose: int = 2, track: str | Tracker = "none", **settings) -> dict:
    """Continue the interrupted lung run in ``run_dir`` from its last finished epoch, with its own settings
    (``segmenter.json``), as :func:`covidxray.training.train.resume` continues a classifier's:
    ``settings`` (of :class:`~covidxray.config.LungTrainConfig`) that differ from the run's are an
    error, and an interrupted replacement (``--overwrite``, in ``.covidxray-staged/``) is continued
    and swapped in once complete."""
    from covidxray.training.backup import refuse_changes, run_to_resume

    tracker = make_tracker(track)
    run, staged = run_to_resume(run_dir, SEGMENTER, "covidxray lungs train")
    target = staged or run
    path = target.file(SEGMENTER)
    config = LungTrainConfig.from_settings(read_settings(target.path), str(path))
    refuse_changes(path, config.conflicts(settings))
    target.remove_temporaries()
    data = _read_data(config)
    target.check_same_split(data["table"], ", ".join(config.data))
    with closing(tracker, track):
        tracker.start(run.path.resolve().name, training_settings(config),
                      tags={"covidxray.run_dir": str(run.path.resolve()), "covidxray.resumed": "true"})
        metrics = _train(config, target, run, data, verbose, tracker)
        if staged is not None:
            _swap_in(run, staged)
        _log_finished(tracker, run, metrics)
    return metrics


def training_settings(config: LungTrainConfig) -> dict:
    """The training settings as ``segmenter.json`` records them (and the tracker logs them)."""
    return {**asdict(config), "widths": list(config.widths)}


def _read_data(config: LungTrainConfig) -> dict:
    """The image/mask pairs of ``config.data`` at the model's size, split by patient: the table with its
    ``split`` and ``used`` columns, the arrays, the unreadable pairs and each split's rows."""
    table = mask_table(config.data)
    table["split"] = split_masks(table, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                                 seed=config.seed).to_numpy()
    images, masks, failed = load_pairs(table, config.image_size)
    for message in failed.values():
        log.warning("left out: %s", message)
    usable = ~table["path"].isin(failed)
    if not usable.any():
        raise DatasetError("no image/mask pair could be read; see the messages above")
    table["used"] = usable.to_numpy()
    part = {name: np.flatnonzero(usable.to_numpy() & (table["split"] == name).to_numpy())
            for name in rundir.SPLIT_NAMES}
    return {"table": table, "images": images, "masks": masks, "failed": failed, "part": part}


def _train(config: LungTrainConfig, run: rundir.RunDir, final_run: rundir.RunDir, data: dict, verbose: int,
           tracker: Tracker) -> dict:
    """Fit (from the backup where ``run`` holds one), measure and write the run's files into ``run``, which
    holds its ``split.csv`` and ``segmenter.json``; ``final_run``: where the run will be once complete."""
    import keras

    from covidxray.backend import runtime_environment
    from covidxray.files import atomic_save
    from covidxray.models.batchnorm import recalibrate_batch_norm
    from covidxray.models.unet import unet
    from covidxray.training.loop import RunLoop
    from covidxray.training.optimizer import adam, steps_per_epoch

    table, images, masks, failed, part = (data[k] for k in ("table", "images", "masks", "failed", "part"))
    keras.utils.set_random_seed(config.seed)
    model = unet(config.image_size, tuple(config.widths))
    steps = steps_per_epoch(len(part["train"]), config.batch_size, whole_batches=True)  # as pair_batches gives them
    model.compile(optimizer=adam(config.learning_rate, steps, config.epochs, warmup_epochs=0), loss=dice_bce_loss,
                  metrics=[dice])
    batches = pair_batches(images[part["train"]], masks[part["train"]], config.batch_size, config.seed,
                           config.augment)
    x_val = images[part["validation"]][..., None].astype(np.float32)
    y_val = masks[part["validation"]][..., None].astype(np.float32)
    loop = RunLoop(run, epochs=config.epochs, monitor="val_dice", has_validation=bool(len(x_val)),
                   patience=config.patience)
    fitted = loop.fit(model, batches, parts={"batches": batches}, tracker=tracker, verbose=verbose,
                      validation_data=(x_val, y_val), shuffle=True)
    # The checkpoint holds the best epoch's weights: batch norm is recalibrated below, then an uncompiled copy saved.
    model.set_weights(keras.saving.load_model(run.file(rundir.MODEL), compile=False).get_weights())
    before = _validation_dice(model, x_val, y_val)
    saved = model.get_weights()
    recalibrate_batch_norm(model, images[part["train"]][..., None])  # batch-norm statistics of the kept weights
    after = _validation_dice(model, x_val, y_val)
    if after < before:
        model.set_weights(saved)

    final = unet(config.image_size, tuple(config.widths))  # uncompiled: the saved file holds no optimizer state
    final.set_weights(model.get_weights())
    atomic_save(run.file(rundir.MODEL), final.save)
    settings = segmenter_settings(config)

    segmenter = LungSegmenter(final, settings, final_run.path, identity=model_identity(run.file(rundir.MODEL), settings))
    metrics = {
        "task": "lung segmentation",
        "data": list(config.data),
        "images": {name: _counts(table.iloc[rows]) for name, rows in part.items()},
        "unreadable": failed,
        "best_epoch": fitted["best_epoch"],
        "validation_dice_at_model_size": {"before_batch_norm_recalibration": before,
                                          "after": after, "kept": "after" if after >= before else "before"},
        "train_seconds": round(fitted["fit_seconds"], 1),
        "test": evaluate_segmenter(segmenter, table.iloc[part["test"]], run.file(FAILURES)),
        "validation": evaluate_segmenter(segmenter, table.iloc[part["validation"]], None),
        "settings": settings,
        "environment": runtime_environment(),
    }
    run.complete(metrics)
    return metrics


def _swap_in(final_run: rundir.RunDir, staged: rundir.RunDir) -> None:
    shutil.rmtree(final_run.file(FAILURES), ignore_errors=True)  # the old drawings: a folder is not replaced in one step
    final_run.swap_in(staged)


def _log_finished(tracker: Tracker, run: rundir.RunDir, metrics: dict) -> None:
    """Log a finished run's held-out Dice and IoU (all sources), its best epoch and time, and its files."""
    scores = {f"{split}_{name}": metrics[split]["all"][name] for split in ("test", "validation")
              if "all" in metrics[split] for name in ("dice", "iou")}
    tracker.log_metrics({**scores, "best_epoch": metrics["best_epoch"], "train_seconds": metrics["train_seconds"]})
    tracker.log_files(run.path, (rundir.METRICS, rundir.HISTORY, SEGMENTER))


def _validation_dice(model, x: np.ndarray, y: np.ndarray) -> float:
    if not len(x):
        return 0.0
    predicted = np.asarray(model.predict(x, batch_size=32, verbose=0)) >= 0.5
    return float(np.mean([dice_iou(t > 0.5, p)[0] for t, p in zip(y, predicted)]))


def _counts(table) -> dict:
    return {"images": int(len(table)), "patients": int(table["patient_id"].nunique()),
            "per_source": {str(k): int(v) for k, v in table["source"].value_counts().sort_index().items()}}


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_segmenter(segmenter: LungSegmenter, table, failures: Path | None = None) -> dict:
    """Dice and IoU of ``segmenter`` on ``table``'s image/mask pairs at each image's own size,
    per source (mean, median, worst), with the quality flags; the worst images drawn into
    ``failures`` (image, true outline in blue, predicted lungs in green) where given."""
    from covidxray.progress import progress_bar

    rows = []
    for image_path, mask_path, source in progress_bar(list(zip(table["path"], table["mask_path"], table["source"])),
                                                      desc="evaluating", unit="img"):
        image, truth = read_pair(image_path, mask_path)
        lungs = segmenter.segment([image])[0]
        d, iou = dice_iou(truth, lungs.mask)
        rows.append({"path": image_path, "source": source, "dice": d, "iou": iou, "quality": lungs.quality,
                     "image": image, "truth": truth, "lungs": lungs})
    summary = {}
    for source in sorted({r["source"] for r in rows}):
        part = [r for r in rows if r["source"] == source]
        dices, ious = np.array([r["dice"] for r in part]), np.array([r["iou"] for r in part])
        worst = sorted(part, key=lambda r: r["dice"])[:WORST_PER_SOURCE]
        flags: dict[str, int] = {}
        for r in part:
            flags[r["quality"]] = flags.get(r["quality"], 0) + 1
        summary[source] = {
            "n": len(part), "dice": float(dices.mean()), "dice_median": float(np.median(dices)),
            "dice_min": float(dices.min()), "iou": float(ious.mean()), "iou_median": float(np.median(ious)),
            "quality": flags,
            "worst": [{"path": r["path"], "dice": round(r["dice"], 4), "iou": round(r["iou"], 4),
                       "quality": r["quality"]} for r in worst],
        }
        if failures is not None:
            for r in worst:
                _draw_failure(failures / f"{source}_{Path(r['path']).stem}.png", r)
    if rows:
        summary["all"] = {"n": len(rows), "dice": float(np.mean([r["dice"] for r in rows])),
                          "iou": float(np.mean([r["iou"] for r in rows]))}
    return summary


def _draw_failure(path: Path, row: dict) -> None:
    from PIL import ImageDraw
    from scipy import ndimage

    from covidxray.files import atomic_save

    picture = np.asarray(overlay(row["image"], row["lungs"])).copy()
    truth = row["truth"]
    edge = truth & ~ndimage.binary_erosion(truth, iterations=max(1, min(truth.shape) // 256))
    picture[edge] = (40, 120, 255)
    from PIL import Image

    image = Image.fromarray(picture)
    ImageDraw.Draw(image).text((4, image.height - 14), f"Dice {row['dice']:.3f}", fill=(255, 220, 0))
    atomic_save(path, lambda tmp: image.save(tmp, format="PNG"))
