"""What the server does with a request's images, on the runtime's own parts.

* **Admission.** A request's images are admitted only while the images in flight
  (decoding, waiting, in a batch) stay within ``max_queue``; otherwise :class:`QueueFull`
  (429 with Retry-After, estimated from the measured throughput).
* **Decoding** runs on the engine's :meth:`~quasar.runtime.engine.Engine.decode` in a pool
  of ``workers`` threads as requests arrive, so it overlaps the batch being inferred.
  Uploads are dataset :class:`~quasar.runtime.sources.Sample` items: never paths (an upload
  never names a file of the server), and every error names the upload, not ``<N bytes>``.
* **Batches** of decoded images from any requests run on the engine's
  :meth:`~quasar.runtime.engine.Engine.embed_decoded` (grouping by shape, retry input by
  input, non-finite embeddings refused) on one inference thread.
* **Rows** come from :func:`quasar.runtime.pipeline.window_rows` - the function that makes
  ``quasar score``'s rows - so an image gets the same scores, status and message here as
  in a ``quasar score`` table.
"""
from __future__ import annotations

import asyncio
import io
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from quasar.constants import STATUS_OK

from ..engine import EngineConfig, Window
from ..pipeline import window_rows
from ..sources import Sample, sample_aware
from .batcher import Batcher
from .config import ServeConfig
from .metrics import Metrics

log = logging.getLogger("quasar.serve")

STATUS_DEADLINE = "deadline"  # never answered: the request itself gets 504


class QueueFull(Exception):
    """Admitting a request would exceed ``max_queue`` images in flight."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Job:
    """One decoded image waiting for a batch."""

    sample: Sample
    pixels: np.ndarray
    deadline: float  # time.monotonic() after which nobody waits for it


def warmup_png(size: int = 256) -> bytes:
    """A deterministic noise PNG for the warm-up batch (decoded like any upload)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class ScoringService:
    """Scores uploads with ``scorer`` (the Scorer API) on its engine; see the module doc."""

    def __init__(self, scorer: Any, cfg: ServeConfig, metrics: Metrics,
                 batcher: Any = None) -> None:
        self.scorer = scorer
        self.cfg = cfg
        self.metrics = metrics
        fixed = getattr(scorer, "fixed_size", None)
        self.engine = scorer.engine_for(EngineConfig(batch_size=cfg.max_batch_size,
                                                     workers=cfg.workers,
                                                     variable_shapes=fixed is None))
        self.engine.load = sample_aware(self.engine.load)  # uploads are Samples
        self.batcher = (batcher or Batcher)(self.run_batch, cfg.max_batch_size, cfg.max_wait_s)
        self.depth = 0
        self.ready = False
        self.warmup_error: Optional[str] = None
        self._rate = 0.0  # images per second of inference, smoothed (for Retry-After)
        self._decode_pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="quasar-decode")

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        self.batcher.start()
        if self.cfg.warmup:
            asyncio.get_running_loop().create_task(self._warm_up(), name="quasar-warmup")
        else:
            self._set_ready()

    async def stop(self) -> None:
        await self.batcher.stop()
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    def _set_ready(self) -> None:
        self.ready = True
        self.metrics.ready.set(1)

    async def _warm_up(self) -> None:
        """One full batch of a synthetic image through decode and the session: the first
        run allocates the session's buffers, so the first user does not pay for it."""
        try:
            sample = Sample(id="warm-up image", data=warmup_png())
            pixels, err = self.engine.decode(sample)
            if err is not None:
                raise err
            n = self.cfg.max_batch_size
            jobs = [Job(sample, pixels, math.inf)] * n
            results = await self.batcher.run_in_thread(self._embed, jobs)
            bad = [e for _, e in results if e is not None]
            if bad:
                raise bad[0]
        except Exception as exc:  # noqa: BLE001 - /ready says why, /health stays up
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            log.error("warm-up batch failed: %s", self.warmup_error)
            return
        self._set_ready()
        log.info("warm-up batch of %d done: ready", self.cfg.max_batch_size)

    # ------------------------------------------------------------------ admission
    def admit(self, n: int) -> None:
        if self.depth + n > self.cfg.max_queue:
            rate = self._rate or 1.0
            retry = int(min(60, max(1, math.ceil((self.depth + n) / rate))))
            raise QueueFull(
                f"the queue is full ({self.depth} images in flight, at most "
                f"{self.cfg.max_queue} (--max-queue)); retry after {retry} s", retry)
        self.depth += n
        self.metrics.queue_depth.set(self.depth)

    def release(self, n: int) -> None:
        self.depth -= n
        self.metrics.queue_depth.set(self.depth)

    # ------------------------------------------------------------------ batches
    def _embed(self, jobs: Sequence[Job]) -> List[Tuple[Optional[np.ndarray], Any]]:
        emb, errs = self.engine.embed_decoded([j.sample for j in jobs],
                                              [(j.pixels, None) for j in jobs])
        return [(emb[i] if errs[i] is None else None, errs[i]) for i in range(len(jobs))]

    def run_batch(self, jobs: List[Job]) -> List[Tuple[Optional[np.ndarray], Any]]:
        """The batcher's function (inference thread): embeddings or errors, in order; jobs
        past their deadline are skipped (their request has already been answered 504)."""
        now = time.monotonic()
        live = [i for i, j in enumerate(jobs) if j.deadline > now]
        out: List[Tuple[Optional[np.ndarray], Any]] = [(None, STATUS_DEADLINE)] * len(jobs)
        if not live:
            return out
        t0 = time.perf_counter()
        res = self._embed([jobs[i] for i in live])
        dt = time.perf_counter() - t0
        self.metrics.batch_size.observe(len(live))
        self.metrics.batch_seconds.observe(dt)
        rate = len(live) / max(dt, 1e-6)
        self._rate = rate if not self._rate else 0.8 * self._rate + 0.2 * rate
        for i, r in zip(live, res):
            out[i] = r
        return out

    # ------------------------------------------------------------------ one request
    async def _decode(self, sample: Sample) -> Tuple[Optional[np.ndarray], Any]:
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool,
                                                                self.engine.decode, sample)

    async def score(self, samples: List[Sample], deadline: float
                    ) -> Tuple[List[Any], np.ndarray]:
        """Rows (``quasar score``'s, in order) and embeddings [n, D] (NaN rows where an
        image failed) of one request's images. Call :meth:`admit` first."""
        decoded = await asyncio.gather(*(self._decode(s) for s in samples))
        emb = np.full((len(samples), self.engine.dim), np.nan, dtype=np.float32)
        errors: List[Optional[Exception]] = [err for _, err in decoded]
        todo = [i for i, (_, err) in enumerate(decoded) if err is None]
        outs = await asyncio.gather(*(self.batcher.submit(Job(samples[i], decoded[i][0],
                                                              deadline)) for i in todo))
        for i, (e, err) in zip(todo, outs):
            if err is None:
                emb[i] = e
            else:
                errors[i] = err
        rows = window_rows(self.scorer, Window(list(samples), emb, errors))
        for r in rows:
            self.metrics.images.labels(r.status).inc()
        return rows, emb


def row_json(index: int, row: Any, embedding: Optional[np.ndarray]) -> Dict[str, Any]:
    """One image's entry of a ``/v1/score`` answer."""
    ok = row.status == STATUS_OK
    out: Dict[str, Any] = {
        "index": index, "name": row.path, "status": row.status,
        "scores": {k: (float(v) if ok else None) for k, v in row.scores.items()},
        "error": None if ok else row.error,
    }
    if embedding is not None:
        out["embedding"] = [float(x) for x in embedding] if ok else None
    return out
