"""covidxray.training.optimizer: the learning-rate schedules and Adam of the classifier and the lung U-Net."""

import keras
import numpy as np
import pytest

from covidxray.training.optimizer import adam, learning_rate_schedule, steps_per_epoch


def rates(schedule, steps) -> list[float]:
    return [float(keras.ops.convert_to_numpy(schedule(step))) for step in steps]


def test_steps_per_epoch_count_the_last_partial_batch_unless_whole_batches_only():
    assert steps_per_epoch(95, 10) == 10 and steps_per_epoch(95, 10, whole_batches=True) == 9
    assert steps_per_epoch(5, 10) == 1 and steps_per_epoch(5, 10, whole_batches=True) == 1  # at least one


def test_learning_rate_warms_up_over_one_epoch_then_decays_to_zero():
    schedule = learning_rate_schedule(0.01, steps_per_epoch(95, 10), epochs=5)  # 10 steps per epoch, 50 in all
    rate = rates(schedule, (0, 5, 10, 30, 50))
    assert rate[0] == pytest.approx(0.0, abs=1e-9) and rate[1] == pytest.approx(0.005)
    assert rate[2] == pytest.approx(0.01)  # the peak, at the end of the first epoch
    assert rate[3] == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi * 20 / 40)), rel=1e-4)  # cosine, halfway: 0.005
    assert rate[4] == pytest.approx(0.0, abs=1e-7)


def test_without_warm_up_the_rate_starts_at_the_peak_as_the_lung_unet_trained():
    schedule = learning_rate_schedule(0.002, 11, epochs=4, warmup_epochs=0)
    before = keras.optimizers.schedules.CosineDecay(0.002, decay_steps=44)  # train_segmenter's own, until issue 29
    steps = (0, 1, 10, 22, 43, 44)
    assert rates(schedule, steps) == pytest.approx(rates(before, steps), abs=1e-12)
    assert rates(schedule, (0,)) == [pytest.approx(0.002)]


def test_one_cycle_rises_from_a_25th_for_30_percent_then_anneals_to_a_250000th():
    schedule = learning_rate_schedule(0.003, 10, epochs=10, kind="one-cycle")  # 100 steps in all, 30 rising
    rate = rates(schedule, (0, 15, 30, 65, 100))
    assert rate[0] == pytest.approx(0.003 / 25)
    assert rate[1] == pytest.approx(0.003 / 25 + (0.003 - 0.003 / 25) / 2)  # linear rise, halfway
    assert rate[2] == pytest.approx(0.003)  # the peak
    floor = 0.003 / 25 / 1e4
    assert rate[3] == pytest.approx(floor + (0.003 - floor) / 2, rel=1e-4)  # cosine, halfway down
    assert rate[4] == pytest.approx(floor, rel=1e-3)
    assert max(rate) == rate[2]
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        learning_rate_schedule(0.003, 10, epochs=10, kind="step")


def test_adam_decays_weights_only_when_asked():
    assert adam(0.01, 10, 2, weight_decay=0.01).weight_decay == pytest.approx(0.01)
    assert adam(0.01, 10, 2).weight_decay is None and adam(0.01, 10, 2, weight_decay=0.0).weight_decay is None
