"""The optimizer of a training run, the classifier's (:mod:`covidxray.training.fit`) and the lung
U-Net's (:mod:`covidxray.training.segmentation`): Adam on a learning-rate schedule per step."""

from __future__ import annotations

import keras

#: fastai v1's fit_one_cycle: share of the steps rising, start = peak / DIV, end = start / FINAL_DIV.
ONE_CYCLE_RISE, ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def steps_per_epoch(train_size: int, batch_size: int, whole_batches: bool = False) -> int:
    """Training steps in one epoch of ``train_size`` images: the last batch partial, or left out
    with ``whole_batches``; at least one."""
    return max(1, train_size // batch_size if whole_batches else -(-train_size // batch_size))


def learning_rate_schedule(peak: float, steps: int, epochs: int, kind: str = "cosine", warmup_epochs: int = 1):
    """The rate per step of ``epochs`` epochs of ``steps`` steps, peaking at ``peak``.

    cosine: a linear warm-up from 0 over the first ``warmup_epochs`` (at most half the steps; the
    classifier's one epoch, the lung U-Net none), then cosine decay to zero at the last step.
    one-cycle (Smith 2018; fastai v1's ``fit_one_cycle``, which the DarkCovidNet authors used):
    the first :data:`ONE_CYCLE_RISE` of the steps rise from rate/25 to the rate, then cosine
    annealing to rate/(25 x 10^4). fastai rises along a cosine, this schedule linearly (Keras's
    ``CosineDecay`` warm-up); fastai also cycles Adam's beta_1 (0.95 to 0.85), which this does not.
    """
    total = steps * epochs
    if kind == "one-cycle":
        warmup = max(1, min(round(ONE_CYCLE_RISE * total), total - 1))
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=peak / ONE_CYCLE_DIV, warmup_target=peak, warmup_steps=warmup,
            decay_steps=max(1, total - warmup), alpha=1 / (ONE_CYCLE_DIV * ONE_CYCLE_FINAL_DIV))
    if kind != "cosine":
        raise ValueError(f"unknown learning-rate schedule {kind!r}; 'cosine' or 'one-cycle'")
    warmup = min(steps * warmup_epochs, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak, decay_steps=max(1, total - warmup),
        warmup_target=peak if warmup else None, warmup_steps=warmup,
    )


def adam(peak: float, steps: int, epochs: int, *, kind: str = "cosine", warmup_epochs: int = 1,
         weight_decay: float | None = None) -> keras.optimizers.Adam:
    """Adam on :func:`learning_rate_schedule`'s rates; with ``weight_decay``, decoupled from the
    gradient as Keras does it (AdamW)."""
    return keras.optimizers.Adam(learning_rate_schedule(peak, steps, epochs, kind, warmup_epochs),
                                 weight_decay=weight_decay or None)
