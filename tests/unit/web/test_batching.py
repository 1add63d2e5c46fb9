"""covidxray.web.batching: items submitted together are handled as one batch."""

from __future__ import annotations

import threading
import time

import pytest

from covidxray.web.batching import Batcher


def test_items_submitted_together_are_handled_in_one_batch_and_each_gets_its_own_result():
    entered, gate = threading.Event(), threading.Event()
    seen = []

    def handle(items):
        entered.set()
        gate.wait(5)  # the first batch blocks until the others are queued
        seen.append(list(items))
        return [item * 10 for item in items]

    batcher = Batcher(handle, max_batch=4, max_wait_s=0.0)
    futures = [batcher.submit(0)]
    assert entered.wait(5)
    futures += [batcher.submit(k) for k in range(1, 7)]
    gate.set()
    assert [f.result(timeout=5) for f in futures] == [k * 10 for k in range(7)]
    assert seen[0] == [0] and seen[1:] == [[1, 2, 3, 4], [5, 6]]  # the waiting ones, at most 4 at a time
    assert batcher.batch_sizes == [1, 4, 2]
    batcher.close()


def test_a_lone_item_waits_at_most_max_wait():
    batcher = Batcher(lambda items: items, max_batch=16, max_wait_s=0.05)
    started = time.perf_counter()
    assert batcher.submit("x").result(timeout=5) == "x"
    assert time.perf_counter() - started < 1.0
    batcher.close()


def test_an_error_reaches_every_caller_of_the_batch_and_the_worker_goes_on():
    calls = []

    def handle(items):
        calls.append(items)
        if "bad" in items:
            raise ValueError("a bad batch")
        return items

    batcher = Batcher(handle, max_batch=8, max_wait_s=0.2)
    futures = [batcher.submit(item) for item in ("ok", "bad")]
    for future in futures:
        with pytest.raises(ValueError, match="a bad batch"):
            future.result(timeout=5)
    assert batcher.submit("later").result(timeout=5) == "later"
    batcher.close()


def test_a_handler_returning_the_wrong_number_of_results_is_an_error():
    batcher = Batcher(lambda items: items[:-1], max_batch=2, max_wait_s=0.2)
    futures = [batcher.submit(k) for k in range(2)]
    with pytest.raises(RuntimeError, match="1 results for a batch of 2"):
        futures[0].result(timeout=5)
    batcher.close()


def test_closed_batcher_refuses_new_items_and_bad_settings_are_refused():
    batcher = Batcher(lambda items: items)
    batcher.close()
    with pytest.raises(RuntimeError, match="the batcher is closed"):
        batcher.submit(1)
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        Batcher(lambda items: items, max_batch=0)
