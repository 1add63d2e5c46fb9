"""covidxray.training.batches: ShuffledBatches (arrays and shards, one or several hosts) and the
TensorFlow pipeline for in-memory arrays (one repeated tf.data pipeline per fit)."""

import numpy as np
import pytest

from covidxray.data.shards import load_shards, write_shards
from covidxray.training.batches import ShuffledBatches, repeated_tf_dataset, sample_weights
from helpers import make_dataset


def _tensorflow():
    pytest.importorskip("tensorflow")


def epochs_of(dataset, n, batch_size, count):
    """The label batches of ``count`` epochs of ``ceil(n / batch_size)`` steps each."""
    steps = -(-n // batch_size)
    batches = list(dataset.take(steps * count).as_numpy_iterator())
    return [batches[e * steps:(e + 1) * steps] for e in range(count)]


def test_every_image_once_per_epoch_in_a_new_seeded_order():
    _tensorflow()
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
    _tensorflow()
    labels = np.array([0, 0, 0, 1, 2, 2])
    images = np.zeros((6, 2, 2, 1), dtype=np.uint8)
    weights = {0: 0.5, 1: 3.0, 2: 1.5}
    (epoch,) = epochs_of(repeated_tf_dataset(images, labels, 4, class_weight=weights), 6, 4, 1)
    for _, y, w in epoch:
        np.testing.assert_allclose(w, [weights[int(c)] for c in y])


def test_mismatched_lengths_are_refused():
    _tensorflow()
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        repeated_tf_dataset(np.zeros((3, 2, 2, 1), np.uint8), np.array([0, 1]), 2)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """300 synthetic images (100 per class) in three shards of 100."""
    root = tmp_path_factory.mktemp("shards")
    write_shards(str(make_dataset(root / "data", per_class=100)), root / "shards", 48, shard_size=100)
    return root / "shards"


def test_every_image_once_per_epoch_in_a_seeded_order(sharded):
    out = sharded
    _, images, _ = load_shards(out)
    pixels = np.asarray(images)
    index = np.arange(len(images))  # labels = image numbers, to see which images came
    batches = ShuffledBatches(images, index, 32, seed=5, workers=0)
    assert len(batches) == 10  # 9 batches of 32 and one of 12
    orders = []
    for _ in range(2):
        seen = []
        for step in range(len(batches)):
            x, y = batches[step]
            assert x.dtype == np.float32 and np.array_equal(x, pixels[y].astype(np.float32))
            seen.append(y)
        batches.on_epoch_end()
        seen = np.concatenate(seen)
        assert np.array_equal(np.sort(seen), index)  # each image exactly once
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])  # a new order every epoch
    again = ShuffledBatches(images, index, 32, seed=5, workers=0)
    assert np.array_equal(np.concatenate([again[s][1] for s in range(len(again))]), orders[0])  # repeatable
    other = ShuffledBatches(images, index, 32, seed=6, workers=0)
    assert not np.array_equal(np.concatenate([other[s][1] for s in range(len(other))]), orders[0])
    dropped = ShuffledBatches(images, index, 32, seed=5, drop_remainder=True, workers=0)
    assert len(dropped) == 9 and all(len(dropped[s][1]) == 32 for s in range(9))


def test_hosts_take_disjoint_slices_of_each_global_batch():
    labels = np.arange(50)
    whole = ShuffledBatches(labels, labels, 8, seed=1, drop_remainder=True, workers=0)
    parts = [ShuffledBatches(labels, labels, 8, seed=1, drop_remainder=True, process_index=i, process_count=2, workers=0)
             for i in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 6
    for step in range(len(whole)):
        first, second = parts[0][step][1], parts[1][step][1]
        assert len(first) == len(second) == 4
        assert np.array_equal(np.concatenate([first, second]), whole[step][1])


def test_sample_weights_and_batches_carry_them():
    weights = {0: 0.5, 2: 4.0}
    np.testing.assert_array_equal(sample_weights(np.array([2, 0, 1, 2]), weights), [4.0, 0.5, 1.0, 4.0])
    labels = np.array([0, 1, 2, 2, 1, 0, 2])
    batches = ShuffledBatches(np.zeros((7, 2, 2, 1), np.uint8), labels, 3, seed=0, class_weight=weights, workers=0)
    assert len(batches) == 3
    for step in range(3):
        _, y, w = batches[step]
        np.testing.assert_array_equal(w, [weights.get(int(c), 1.0) for c in y])


def test_start_at_continues_the_sequence_of_epochs():
    labels = np.arange(20)
    run = ShuffledBatches(labels, labels, 5, seed=2, workers=0)
    for _ in range(3):
        run.on_epoch_end()
    resumed = ShuffledBatches(labels, labels, 5, seed=2, workers=0)
    resumed.start_at(3)
    assert [resumed[s][1].tolist() for s in range(4)] == [run[s][1].tolist() for s in range(4)]
    np.testing.assert_array_equal(np.concatenate([run[s][1] for s in range(4)]), run.epoch_order(3))


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        ShuffledBatches(np.zeros((3, 2, 2, 1)), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="several processes"):
        ShuffledBatches(np.arange(10), np.arange(10), 5, process_count=2, drop_remainder=True)


def test_sample_weights_given_per_image_pass_through_and_must_match():
    weights = np.array([0.5, 2.0, 1.0], dtype=np.float64)
    out = sample_weights(np.array([0, 1, 1]), weights)
    assert out.dtype == np.float32 and out.tolist() == [0.5, 2.0, 1.0]
    with pytest.raises(ValueError, match="2 sample weights for 3 images"):
        sample_weights(np.array([0, 1, 1]), weights[:2])
    batches = ShuffledBatches(np.zeros((3, 4, 4, 1), np.uint8), np.array([0, 1, 1]), 3, class_weight=weights)
    _, labels, got = batches[0]
    assert sorted(zip(labels.tolist(), got.tolist())) == [(0, 0.5), (1, 1.0), (1, 2.0)]
