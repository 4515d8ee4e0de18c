"""Score a stream of inputs into rows: the engine's windows, scored and labelled.

The engine (:mod:`quasar.runtime.engine`) decodes ahead in a thread pool, batches by shape
and isolates failures; here each window becomes rows in input order, handed to a sink
(the output writers). A failure never stops the run: it becomes a row with its status
(``not_found``, ``decode_error``, ``too_large``, ``read_error``, ``inference_error``, ...)
and message.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, List, Tuple

import numpy as np

from quasar.constants import STATUS_OK
from quasar.errors import error_status

from .engine import Engine, EngineConfig, Window, default_workers  # noqa: F401 (re-exported)
from .sources import sample_aware
from .writers import Row

log = logging.getLogger(__name__)

Sink = Callable[[List[Row], np.ndarray], None]
"""Receives a window's rows in input order and the embeddings [n_ok, D] of its ok rows."""

PipelineConfig = EngineConfig  # how a run batches and overlaps work


@dataclass
class RunStats:
    """Counts of one run (rows handed to the sink, by status)."""

    by_status: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def scored(self) -> int:
        return self.by_status.get(STATUS_OK, 0)

    @property
    def failed(self) -> int:
        return sum(v for k, v in self.by_status.items() if k != STATUS_OK)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def images_per_s(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    def summary(self, out=None, where: str = "") -> str:
        """The one-line summary both engines end with: counts by status, ``where`` (what the
        engine adds: skipped rows, parts), rate, destination."""
        from quasar.text import safe_text

        failed = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_status.items()) if k != STATUS_OK)
        return (f"quasar score: {self.scored} scored, {self.failed} failed"
                + (f" ({failed})" if failed else "") + where
                + f"; {self.total} images in {self.seconds:.1f} s ({self.images_per_s:.1f} "
                  "images/s)" + (f" -> {safe_text(out)}" if out else ""))


def item_id(item: Any) -> str:
    """The identity written in a row's ``path`` column: a path, or a sample's ``id``."""
    return item if isinstance(item, str) else str(getattr(item, "id", item))


def window_rows(scorer: Any, w: Window) -> List[Row]:
    """Rows of a window, in input order: scores of the ok inputs, status + message of the
    others (the engine only passes finite, non-zero embeddings, whose scores are finite)."""
    names = list(scorer.anchor_names)
    ok = w.ok
    scores = scorer.scores_from_embeddings(w.embeddings[ok]) if ok.any() else {}
    nan = {a: float("nan") for a in names}
    rows: List[Row] = []
    k = 0
    for item, err in zip(w.items, w.errors):
        if err is None:
            rows.append(Row(item_id(item), {a: float(scores[a][k]) for a in names},
                            STATUS_OK, ""))
            k += 1
        else:
            rows.append(Row(item_id(item), nan, error_status(err), str(err)))
    return rows


def iter_rows(scorer: Any, inputs: Iterable[Any], cfg: EngineConfig
              ) -> Iterator[Tuple[List[Row], np.ndarray]]:
    """``(rows, embeddings of the ok rows)`` window by window: the engine over the Scorer
    API, dataset samples included (tar / Parquet members decode in the engine too)."""
    engine = Engine(sample_aware(scorer.load_image), scorer.embed_pixels, scorer.embed_dim, cfg)
    for w in engine.windows(inputs):
        yield window_rows(scorer, w), w.embeddings[w.ok]


def run_pipeline(scorer: Any, inputs: Iterable[Any], sink: Sink, cfg: EngineConfig,
                 progress=None) -> RunStats:
    """Score every input (lazily consumed) and hand rows to ``sink`` window by window.

    ``scorer`` has the Scorer API (``load_image``, ``embed_pixels``, ``embed_dim``,
    ``anchor_names``, ``scores_from_embeddings``). ``progress`` is anything with
    ``update(n)`` (a tqdm bar). KeyboardInterrupt stops decoding promptly; windows already
    passed to the sink are complete.
    """
    stats = RunStats()
    t0 = time.perf_counter()
    try:
        for rows, emb in iter_rows(scorer, inputs, cfg):
            sink(rows, emb)
            stats.by_status.update(r.status for r in rows)
            if progress is not None:
                progress.update(len(rows))
    finally:
        stats.seconds = time.perf_counter() - t0
    return stats
