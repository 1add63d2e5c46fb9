"""Shuffled training batches from an in-memory array or a lazy shard array, and the fit on in-memory arrays.

:class:`ShuffledBatches` is a ``keras.utils.PyDataset``: Keras fetches its batches in worker
threads (``workers``) and keeps ``max_queue_size`` of them ready, so reading shards from disk
overlaps with training. The order is a fresh permutation every epoch, drawn from
``(seed, epoch)``: the same seed gives the same batches on every run and every backend.
"""

from __future__ import annotations

import keras
import numpy as np


def sample_weights(labels: np.ndarray, class_weight: dict[int, float] | np.ndarray) -> np.ndarray:
    """Each image's weight, float32: its class's entry of ``class_weight`` (1.0 where it has none),
    or ``class_weight`` itself when it is already one weight per image."""
    labels = np.asarray(labels)
    if isinstance(class_weight, np.ndarray):
        if class_weight.shape != labels.shape:
            raise ValueError(f"{len(class_weight)} sample weights for {len(labels)} images")
        return class_weight.astype(np.float32)
    table = np.array([class_weight.get(c, 1.0) for c in range(int(labels.max()) + 1)], dtype=np.float32)
    return table[labels]


class ShuffledBatches(keras.utils.PyDataset):
    """``(images, labels[, sample weights])`` batches in a new random order each epoch.

    ``images``: ``(n, size, size, 1)`` uint8, an ndarray or a :class:`~covidxray.data.shards.ShardArray`.
    ``drop_remainder``: leave out the last, short batch (data-parallel training needs every batch
    to split evenly over the devices); the images left out change from epoch to epoch.
    ``class_weight``: class index -> weight, returned as per-image sample weights (or an array of
    one weight per image).
    ``process_index``, ``process_count``: with several processes (hosts), every process walks
    the same permutation and returns its own equal slice of each global batch of ``batch_size``.
    """

    def __init__(self, images, labels: np.ndarray, batch_size: int, *, seed: int = 0, drop_remainder: bool = False,
                 class_weight: dict[int, float] | np.ndarray | None = None, process_index: int = 0, process_count: int = 1,
                 workers: int = 2, max_queue_size: int = 4):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels)
        self.batch_size, self.seed, self.drop_remainder = int(batch_size), int(seed), drop_remainder
        if process_count > 1 and (batch_size % process_count or not drop_remainder):
            raise ValueError("with several processes the batch size must split evenly and drop_remainder be set")
        self.process_index, self.process_count = process_index, process_count
        self.weights = None if class_weight is None else sample_weights(self.labels, class_weight)
        self.epoch = 0
        self.order = self.epoch_order(0)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of image indices used in ``epoch`` (counted from 0)."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.labels))

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def batch_indices(self, index: int) -> np.ndarray:
        """The image indices of batch ``index`` (this process's slice of it)."""
        local = self.batch_size // self.process_count
        start = index * self.batch_size + self.process_index * local
        return self.order[start:min(start + local, (index + 1) * self.batch_size)]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        picked = self.batch_indices(index)
        ascending = np.argsort(picked)  # read shards front to back, then restore the batch's order
        images = np.empty((len(picked), *self.images.shape[1:]), dtype=np.float32)
        images[ascending] = np.asarray(self.images[picked[ascending]], dtype=np.float32)
        if self.weights is None:
            return images, self.labels[picked]
        return images, self.labels[picked], self.weights[picked]

    def start_at(self, epoch: int) -> None:
        """Continue with the order of ``epoch`` (counted from 0), as a resumed run does."""
        self.epoch = epoch
        self.order = self.epoch_order(epoch)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self.epoch_order(self.epoch)


def repeated_tf_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int = 0,
                        class_weight: dict[int, float] | np.ndarray | None = None, skip_epochs: int = 0):
    """In-memory arrays as one ``tf.data`` pipeline for a whole fit (TensorFlow backend only).

    A fresh permutation each epoch (from ``seed``), the last batch short, as ``model.fit(x, y,
    shuffle=True)`` does; but built once and repeated, for ``fit(..., steps_per_epoch=ceil(n /
    batch_size))``. Given arrays, Keras starts a new pipeline every epoch, and on this
    project's 2-core machine that start sometimes left both cores idle for 1 s (compactnet,
    384 images at 160 px) to 4.6 s (darkcovidnet at 256 px) before the epoch's first batch.
    Batches are gathered from the arrays and cast to float32 in tf.data's threads, while the
    model trains on the previous one. ``skip_epochs``: start with the order of that epoch (only
    indices are drawn for the skipped ones). ``labels``: one array, or a dict of arrays (one per
    output of a model with several, weighted by one weight per image if at all).
    """
    import tensorflow as tf

    n = len(images)
    targets = tf.nest.map_structure(np.asarray, labels)
    for t in tf.nest.flatten(targets):
        if len(t) != n:
            raise ValueError(f"{n} images but {len(t)} labels")
    if isinstance(targets, dict) and class_weight is not None and not isinstance(class_weight, np.ndarray):
        raise ValueError("with labels for several outputs, give one weight per image rather than class weights")
    image_tensor = tf.convert_to_tensor(images)
    label_tensors = tf.nest.map_structure(tf.convert_to_tensor, targets)
    weights = None if class_weight is None else tf.convert_to_tensor(
        sample_weights(tf.nest.flatten(targets)[0], class_weight))

    def gather(indices):
        picked = (tf.cast(tf.gather(image_tensor, indices), tf.float32),
                  tf.nest.map_structure(lambda t: tf.gather(t, indices), label_tensors))
        return picked if weights is None else (*picked, tf.gather(weights, indices))

    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    batches = order.batch(batch_size).repeat().skip(skip_epochs * -(-n // batch_size))
    return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def fit_arrays(model: keras.Model, x: np.ndarray, y: np.ndarray | dict[str, np.ndarray], *, epochs: int, batch_size: int,
               class_weight: dict | np.ndarray | None = None, callbacks=(), verbose: int = 0, seed: int = 0,
               skip_epochs: int = 0) -> keras.callbacks.History:
    """Train ``model`` on in-memory images ``x`` (uint8, [0, 255]) and labels ``y`` (a dict of them
    for a model with several outputs), reshuffled each epoch: the input pipeline of
    :func:`covidxray.training.fit.fit` (and of ``benchmarks/train_speed.py``).

    On TensorFlow the arrays go through one repeated ``tf.data`` pipeline for the whole fit
    (:func:`repeated_tf_dataset`: no pipeline restart, and no idle
    cores, at each epoch); on JAX and torch, to ``model.fit`` as they are. ``skip_epochs``: on
    TensorFlow, start from the order of that epoch (a resumed run continues the same sequence).
    """
    if keras.backend.backend() == "tensorflow":
        dataset = repeated_tf_dataset(x, y, batch_size, seed=seed, class_weight=class_weight, skip_epochs=skip_epochs)
        return model.fit(dataset, epochs=epochs, steps_per_epoch=-(-len(x) // batch_size),
                         callbacks=list(callbacks), verbose=verbose, shuffle=False)  # the dataset shuffles
    per_image = isinstance(class_weight, np.ndarray)
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, class_weight=None if per_image else class_weight,
                     sample_weight=class_weight if per_image else None, callbacks=list(callbacks), verbose=verbose,
                     shuffle=True)
