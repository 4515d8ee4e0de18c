"""The local batcher in-process (fast): batches close when full or when their first job has
waited ``max_wait_s``, never exceed ``max_batch_size``, keep each job's own result, drop
jobs whose caller went away, and a failing batch fails only its own jobs."""
from __future__ import annotations

import asyncio
import time

import pytest

from quasar.runtime.serve.batcher import Batcher


def run(coro):
    return asyncio.run(coro)


async def with_batcher(fn, max_batch_size, max_wait_s, body):
    b = Batcher(fn, max_batch_size, max_wait_s)
    b.start()
    try:
        return await body(b)
    finally:
        await b.stop()


def test_full_batches_close_at_once_and_results_stay_with_their_jobs():
    seen = []

    def fn(jobs):
        seen.append(list(jobs))
        return [j * 10 for j in jobs]

    async def body(b):
        t0 = time.monotonic()
        out = await asyncio.gather(*(b.submit(i) for i in range(10)))
        return out, time.monotonic() - t0

    out, dt = run(with_batcher(fn, 4, 1.0, body))
    assert out == [i * 10 for i in range(10)]
    assert [len(x) for x in seen] == [4, 4, 2]          # full, full, then the rest
    assert sorted(j for x in seen for j in x) == list(range(10))
    assert 1.0 <= dt < 2.9  # the last partial batch waited max_wait once, not per batch


def test_a_lone_job_waits_at_most_max_wait():
    async def body(b):
        t0 = time.monotonic()
        r = await b.submit(7)
        return r, time.monotonic() - t0

    r, dt = run(with_batcher(lambda jobs: [j + 1 for j in jobs], 8, 0.2, body))
    assert r == 8 and 0.19 <= dt < 1.0


def test_late_jobs_join_the_open_batch():
    seen = []

    def fn(jobs):
        seen.append(len(jobs))
        return jobs

    async def body(b):
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
        return await asyncio.gather(first, *rest)

    assert run(with_batcher(fn, 8, 0.3, body)) == [0, 1, 2]
    assert seen == [3]


def test_cancelled_jobs_are_dropped_and_failures_stay_in_their_batch():
    seen = []

    def fn(jobs):
        seen.append(list(jobs))
        if "boom" in jobs:
            raise RuntimeError("batch failed")
        return jobs

    async def body(b):
        gone = asyncio.ensure_future(b.submit("gone"))
        await asyncio.sleep(0.01)
        gone.cancel()
        bad = asyncio.ensure_future(b.submit("boom"))
        with pytest.raises(RuntimeError, match="batch failed"):
            await bad
        return await b.submit("fine")

    assert run(with_batcher(fn, 2, 0.1, body)) == "fine"
    assert ["gone"] not in seen and all("gone" not in x for x in seen)
    assert seen[-1] == ["fine"]


def test_wrong_result_count_fails_the_batch():
    async def body(b):
        return await b.submit(1)

    with pytest.raises(RuntimeError, match="returned 0 results for 1 jobs"):
        run(with_batcher(lambda jobs: [], 4, 0.0, body))
