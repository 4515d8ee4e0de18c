"""Dynamic batching: the images of concurrent requests, gathered into batches for one session.

An image waits at most ``max_wait_s`` from the moment the first image of its batch arrived
(Triton's ``max_queue_delay``), and a batch closes as soon as it holds ``max_batch_size``
images. Batches run one at a time on one inference thread (one ONNX Runtime session uses
every core itself; two concurrent runs would only fight over them), while the event loop
keeps accepting and decoding the next requests - so under load the next batch fills while
this one runs, and batches grow with the load without any extra wait.

Why a batcher of our own, and whether it stays (docs/serve.md, "Which batcher"): the
interleaved measurement against LitServe's batching and Ray Serve's ``@serve.batch`` on
the same engine (scripts/load_serve.py) found no winner on a busy machine - the quiet run
decides. ``@serve.batch`` runs only inside a Ray Serve replica (Ray 2.60 asks the replica
context when its queue is made), so it batches the cluster deployment
(:mod:`.ray_serve`), and this class the local server; both take the same
``run_batch(jobs) -> results``, and :class:`~.service.ScoringService` takes either.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Deque, List, Optional, Tuple

RunBatch = Callable[[List[Any]], List[Any]]


class Batcher:
    """``await batcher.submit(job)`` -> that job's result from ``run_batch(jobs)``, which
    runs on a single inference thread with up to ``max_batch_size`` jobs at a time.

    ``run_batch`` must return one result per job, in order, and must not raise (a batch
    that raises fails each of its jobs with that exception).
    """

    def __init__(self, run_batch: RunBatch, max_batch_size: int, max_wait_s: float) -> None:
        self.run_batch = run_batch
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self._queue: Deque[Tuple[Any, asyncio.Future, float]] = deque()
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="quasar-infer")

    def __len__(self) -> int:
        """Jobs waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="quasar-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, fut, _ in self._queue:
            if not fut.done():
                fut.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, job: Any) -> Any:
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((job, fut, time.monotonic()))
        self._wake.set()  # type: ignore[union-attr]
        return await fut

    async def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the inference thread (the warm-up batch)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _gather(self) -> List[Tuple[Any, asyncio.Future]]:
        """The next batch: wait for a first job, then until the batch is full or the first
        job has waited ``max_wait_s``. Jobs whose caller went away are dropped."""
        wake = self._wake
        assert wake is not None
        while True:
            while self._queue and self._queue[0][1].done():  # cancelled (deadline)
                self._queue.popleft()
            if self._queue:
                break
            wake.clear()
            await wake.wait()
        close_at = self._queue[0][2] + self.max_wait_s
        while len(self._queue) < self.max_batch_size:
            left = close_at - time.monotonic()
            if left <= 0:
                break
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), left)
            except asyncio.TimeoutError:
                break
        batch = []
        while self._queue and len(batch) < self.max_batch_size:
            job, fut, _ = self._queue.popleft()
            if not fut.done():
                batch.append((job, fut))
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch,
                                                      [job for job, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for "
                                       f"{len(batch)} jobs")
            except Exception as exc:  # noqa: BLE001 - fail this batch's jobs, keep serving
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)
