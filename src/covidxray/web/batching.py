"""Uploads that arrive together are analysed as one batch.

One model answering one image at a time behind a lock leaves a CPU's vector units idle and pays
the per-call overhead (Python, the segmenter, Grad-CAM's tape) once per image. :class:`Batcher`
runs one worker thread: it takes the first waiting item, waits at most ``max_wait_s`` for more (up
to ``max_batch``), hands them to ``handle`` as one list and resolves each caller's future with its
own result (or the batch's error). A caller alone waits ``max_wait_s`` at most.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

#: Most uploads analysed in one batch, and the longest a first upload waits for others (seconds).
MAX_BATCH, MAX_WAIT_S = 16, 0.02
_STOP = object()


class Batcher:
    """Collects items from many threads and hands them to ``handle`` in batches, in one worker thread."""

    def __init__(self, handle: Callable[[list], list], *, max_batch: int = MAX_BATCH, max_wait_s: float = MAX_WAIT_S):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be at least 1 and max_wait_s at least 0; got {max_batch}, {max_wait_s}")
        self.handle, self.max_batch, self.max_wait_s = handle, max_batch, max_wait_s
        self.batch_sizes: list[int] = []  # the size of every batch handled, for benchmarks and tests
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="covidxray-batcher", daemon=True)
        self._worker.start()

    def submit(self, item) -> Future:
        """A future of ``item``'s result."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the items already submitted, then stop the worker."""
        self._closed = True
        self._queue.put(_STOP)
        self._worker.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, deadline = [first], time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._handle(batch)

    def _handle(self, batch: list) -> None:
        self.batch_sizes.append(len(batch))
        try:
            results = self.handle([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except BaseException as error:  # every caller hears of it; the worker goes on
            for _, future in batch:
                future.set_exception(error)
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)
