"""Train a lung segmenter (``covidxray lungs train``) and measure it on held-out patients.

The image/mask pairs of every dataset given (:mod:`covidxray.data.masks`) are split by patient,
stratified by source (70/15/15 by default); the U-Net (:mod:`covidxray.models.unet`) trains on the
training images with random affine maps applied to image and mask together and random gamma, blur
and noise on the image; the epoch with the best validation Dice is kept. The held-out test images
are then segmented as ``covidxray lungs segment`` does it (at their own size, post-processed) and
compared with their masks: Dice and IoU per image, summarised per source, with the worst images
drawn in ``failures/``. The run folder holds ``model.keras``, ``segmenter.json``, ``split.csv``,
``history.csv``, ``metrics.json`` and ``failures/*.png``; every file is written atomically.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from covidxray import rundir
from covidxray.config import LungTrainConfig
from covidxray.data.masks import load_pairs, mask_table, read_pair, split_masks
from covidxray.errors import DatasetError
from covidxray.inference.lungs import KIND, SEGMENTER, LungSegmenter, model_identity, overlay

log = logging.getLogger(__name__)

FAILURES = "failures"  # folder: the worst held-out images per source, drawn
WORST_PER_SOURCE = 3


def segmenter_settings(config: LungTrainConfig) -> dict:
    """The contents of ``segmenter.json``: what inference needs, and the training settings."""
    return {"kind": KIND, "image_size": config.image_size, "widths": list(config.widths),
            "threshold": config.threshold, "training": {**asdict(config), "widths": list(config.widths)}}


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
    (:func:`augment_pair`) where ``augment``. (Built here so that importing this module needs no Keras.)"""
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

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(images))

    return PairBatches()


# ---------------------------------------------------------------------------------------------
# Training


def train_segmenter(config: LungTrainConfig, out: str | Path, *, overwrite: bool = False, verbose: int = 2) -> dict:
    """Train a lung U-Net on ``config.data`` and write the run folder ``out``; returns its metrics."""
    import keras

    from covidxray.backend import runtime_environment
    from covidxray.files import atomic_save
    from covidxray.models.batchnorm import recalibrate_batch_norm
    from covidxray.models.unet import unet
    from covidxray.training.callbacks import BestCheckpoint, HistoryCsv, LearningRateLog, tensorboard_callback
    from covidxray.training.optimizer import adam, steps_per_epoch

    config.check()
    final_run = rundir.RunDir(out)
    final_run.refuse_to_replace(overwrite)
    # Replacing a finished run (--overwrite): the new one is written aside and swapped in once complete.
    replacing = overwrite and final_run.file(rundir.MODEL).exists()
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
    run = final_run.stage() if replacing else final_run
    if not replacing:
        run.create()
        shutil.rmtree(run.file(FAILURES), ignore_errors=True)
        run.file(SEGMENTER).unlink(missing_ok=True)
    rundir.write_csv(run.file(rundir.SPLIT), table)

    keras.utils.set_random_seed(config.seed)
    model = unet(config.image_size, tuple(config.widths))
    steps = steps_per_epoch(len(part["train"]), config.batch_size, whole_batches=True)  # as pair_batches gives them
    model.compile(optimizer=adam(config.learning_rate, steps, config.epochs, warmup_epochs=0), loss=dice_bce_loss,
                  metrics=[dice])
    batches = pair_batches(images[part["train"]], masks[part["train"]], config.batch_size, config.seed,
                           config.augment)
    x_val = images[part["validation"]][..., None].astype(np.float32)
    y_val = masks[part["validation"]][..., None].astype(np.float32)
    # Kept in memory: batch norm is recalibrated below, then an uncompiled copy saved.
    best = BestCheckpoint(monitor="val_dice", mode="max", keep_last=not len(x_val))
    tensorboard = tensorboard_callback(run)
    callbacks = [LearningRateLog(), best, HistoryCsv(run), *([] if tensorboard is None else [tensorboard])]
    started = time.perf_counter()
    model.fit(batches, validation_data=(x_val, y_val), epochs=config.epochs, verbose=verbose, callbacks=callbacks)
    train_seconds = time.perf_counter() - started
    model.set_weights(best.weights)
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
    run.write_json(SEGMENTER, settings)

    segmenter = LungSegmenter(final, settings, final_run.path, identity=model_identity(run.file(rundir.MODEL), settings))
    metrics = {
        "task": "lung segmentation",
        "data": list(config.data),
        "images": {name: _counts(table.iloc[rows]) for name, rows in part.items()},
        "unreadable": failed,
        "best_epoch": best.best_epoch,
        "validation_dice_at_model_size": {"before_batch_norm_recalibration": before,
                                          "after": after, "kept": "after" if after >= before else "before"},
        "train_seconds": round(train_seconds, 1),
        "test": evaluate_segmenter(segmenter, table.iloc[part["test"]], run.file(FAILURES)),
        "validation": evaluate_segmenter(segmenter, table.iloc[part["validation"]], None),
        "settings": settings,
        "environment": runtime_environment(),
    }
    run.write_json(rundir.METRICS, metrics)  # last: the run is complete
    if replacing:
        shutil.rmtree(final_run.file(FAILURES), ignore_errors=True)  # the old drawings: a folder is not replaced in one step
        final_run.swap_in(run)
    return metrics


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
