"""The TensorFlow training pipeline for in-memory arrays: one repeated tf.data pipeline per fit."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from covidxray.data.batches import repeated_tf_dataset  # noqa: E402


def epochs_of(dataset, n, batch_size, count):
    """The label batches of ``count`` epochs of ``ceil(n / batch_size)`` steps each."""
    steps = -(-n // batch_size)
    batches = list(dataset.take(steps * count).as_numpy_iterator())
    return [batches[e * steps:(e + 1) * steps] for e in range(count)]


def test_every_image_once_per_epoch_in_a_new_seeded_order():
    n, batch_size = 50, 16
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(4, axis=1).repeat(4, axis=2)
    labels = np.arange(n)
    epochs = epochs_of(repeated_tf_dataset(images, labels, batch_size, seed=3), n, batch_size, 3)
    orders = []
    for epoch in epochs:
        assert [len(b[1]) for b in epoch] == [16, 16, 16, 2]  # the last batch is short, as with fit(x, y)
        order = np.concatenate([b[1] for b in epoch])
        assert sorted(order) == list(range(n))  # each image once
        for x, y in epoch:
            assert x.dtype == np.float32 and x.shape[1:] == (4, 4, 1)
            np.testing.assert_array_equal(x[:, 0, 0, 0], y)  # images stay with their labels
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    again = epochs_of(repeated_tf_dataset(images, labels, batch_size, seed=3), n, batch_size, 2)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in again[1]]), orders[1])
    other = epochs_of(repeated_tf_dataset(images, labels, batch_size, seed=4), n, batch_size, 1)
    assert not np.array_equal(np.concatenate([b[1] for b in other[0]]), orders[0])


def test_class_weights_become_sample_weights():
    labels = np.array([0, 0, 0, 1, 2, 2])
    images = np.zeros((6, 2, 2, 1), dtype=np.uint8)
    weights = {0: 0.5, 1: 3.0, 2: 1.5}
    (epoch,) = epochs_of(repeated_tf_dataset(images, labels, 4, class_weight=weights), 6, 4, 1)
    for _, y, w in epoch:
        np.testing.assert_allclose(w, [weights[int(c)] for c in y])


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        repeated_tf_dataset(np.zeros((3, 2, 2, 1), np.uint8), np.array([0, 1]), 2)
