"""Score a stream of image paths: decoding in a thread pool overlapping inference.

Worker threads run ``scorer.load_image`` (decode + preprocess; Pillow and numpy release
the GIL) while the main thread runs ``scorer.embed_pixels`` on the previous window. The
number of decoded-or-decoding inputs is bounded, and the input iterator is consumed
lazily, so memory stays flat however many paths stream in.

Inputs are handled in *windows* (``batch_size`` inputs when every image has the same
shape, ``batch_size * group_factor`` when shapes vary, e.g. ``native`` resolution): a
window's decoded images are grouped by shape, each group run in batches of at most
``batch_size``, and the window's rows handed to the sink in input order. A failure never
stops the run: it becomes a row with its status (``not_found``, ``decode_error``,
``too_large``, ``read_error``, ``inference_error``) and message.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter, OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Deque, Iterable, List, Optional, Tuple

import numpy as np

from quasar.errors import ImageDecodeError

from .writers import STATUS_OK, Row

log = logging.getLogger(__name__)

Sink = Callable[[List[Row], np.ndarray], None]
"""Receives a window's rows in input order and the embeddings [n_ok, D] of its ok rows."""


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class PipelineConfig:
    """How a run batches and overlaps work.

    ``max_window_bytes`` also closes a window early so that a window of huge native-size
    images stays within memory.
    """

    batch_size: int = 16
    workers: int = field(default_factory=default_workers)
    variable_shapes: bool = False
    group_factor: int = 8
    max_window_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if int(self.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if int(self.group_factor) < 1:
            raise ValueError(f"group factor must be >= 1, got {self.group_factor}")

    @property
    def window(self) -> int:
        return self.batch_size * (self.group_factor if self.variable_shapes else 1)

    @property
    def in_flight(self) -> int:
        """Inputs submitted for decoding beyond the window being assembled."""
        return self.window + max(self.batch_size, 2 * self.workers)


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


Decoded = Tuple[Optional[np.ndarray], str, str]  # pixels, status, message


# Error class (by name, most specific first in each MRO) -> status of its row.
ERROR_STATUS = {
    "ImageTooLargeError": "too_large",
    "ImageNotFoundError": "not_found",
    "EmptyImageError": "empty_file",
    "TruncatedImageError": "truncated",
    "NotAnImageError": "not_an_image",
    "ImageDecodeError": "decode_error",
    "FileNotFoundError": "not_found",
    "OSError": "read_error",
}


def error_status(exc: BaseException) -> str:
    """Row status of a decoding failure (``decode_error`` for anything unforeseen)."""
    for cls in type(exc).__mro__:
        if cls.__name__ in ERROR_STATUS:
            return ERROR_STATUS[cls.__name__]
    return "decode_error"


def decode_one(scorer, path: str) -> Decoded:
    """Decode + preprocess one path; any failure becomes (None, status, message)."""
    if not isinstance(path, str):  # a dataset sample (runtime/sources.py)
        return path.decode(scorer.load_image)
    try:
        if not os.path.lexists(path):
            return None, "not_found", f"{path}: no such file"
        arr = np.asarray(scorer.load_image(path), dtype=np.float32)
        if arr.ndim != 3 or arr.shape[0] != 3:
            return None, "decode_error", f"{path}: preprocessing gave shape {arr.shape}, expected [3,H,W]"
        return arr, STATUS_OK, ""
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
        msg = str(exc) if isinstance(exc, ImageDecodeError) else f"{type(exc).__name__}: {exc}"
        if path not in msg:
            msg = f"{path}: {msg}"
        return None, error_status(exc), msg


def _embed_group(scorer, arrays: List[np.ndarray]) -> List[Tuple[Optional[np.ndarray], str]]:
    """Embeddings of same-shape arrays (one per input), retrying one by one if a batch fails."""
    try:
        emb = np.asarray(scorer.embed_pixels(np.stack(arrays)), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(arrays):
            raise RuntimeError(f"encoder returned shape {emb.shape} for {len(arrays)} inputs")
        return [(e, "") for e in emb]
    except Exception as exc:  # noqa: BLE001
        if len(arrays) == 1:
            return [(None, f"{type(exc).__name__}: {exc}")]
        log.debug("batch of %d failed (%s); retrying one by one", len(arrays), exc)
        return [r for a in arrays for r in _embed_group(scorer, [a])]


def _process_window(scorer, items: List[Tuple[str, Decoded]], batch_size: int,
                    dim: Optional[int]) -> Tuple[List[Row], np.ndarray]:
    n = len(items)
    embs: List[Optional[np.ndarray]] = [None] * n
    errors: List[str] = [""] * n
    groups: "OrderedDict[tuple, List[int]]" = OrderedDict()
    for i, (_, (arr, status, _msg)) in enumerate(items):
        if status == STATUS_OK:
            groups.setdefault(arr.shape, []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            for i, (e, err) in zip(chunk, _embed_group(scorer, [items[i][1][0] for i in chunk])):
                embs[i], errors[i] = e, err
    ok_idx = [i for i in range(n) if embs[i] is not None]
    if ok_idx:
        ok_emb = np.stack([embs[i] for i in ok_idx]).astype(np.float32, copy=False)
        scores = scorer.scores_from_embeddings(ok_emb)
    else:
        ok_emb = np.zeros((0, dim or 0), np.float32)
        scores = {}
    names = list(scorer.anchor_names)
    pos = {i: k for k, i in enumerate(ok_idx)}
    nan = {a: float("nan") for a in names}
    rows = []
    for i, (path, (_arr, status, msg)) in enumerate(items):
        if i in pos:
            k = pos[i]
            rows.append(Row(path, {a: float(scores[a][k]) for a in names}, STATUS_OK, ""))
        elif status == STATUS_OK:
            rows.append(Row(path, nan, "inference_error", f"{path}: {errors[i]}"))
        else:
            rows.append(Row(path, nan, status, msg))
    return rows, ok_emb


def run_pipeline(scorer, paths: Iterable[str], sink: Sink, cfg: PipelineConfig,
                 progress=None) -> RunStats:
    """Score every path (lazily consumed) and hand rows to ``sink`` window by window.

    ``progress`` is anything with ``update(n)`` (a tqdm bar). KeyboardInterrupt stops
    decoding promptly; windows already passed to the sink are complete.
    """
    stats = RunStats()
    dim = getattr(scorer, "embed_dim", None)
    it = iter(paths)
    pending: Deque[Tuple[str, Future]] = deque()
    exhausted = False
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="quasar-decode")

    def top_up(limit: int) -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < limit:
            try:
                path = next(it)
            except StopIteration:
                exhausted = True
                return
            pending.append((str(path), pool.submit(decode_one, scorer, path)))

    try:
        while True:
            top_up(cfg.in_flight)
            if not pending:
                break
            window: List[Tuple[str, Decoded]] = []
            nbytes = 0
            while pending and len(window) < cfg.window and nbytes < cfg.max_window_bytes:
                path, fut = pending.popleft()
                dec = fut.result()
                window.append((path, dec))
                if dec[0] is not None:
                    nbytes += dec[0].nbytes
                top_up(cfg.in_flight)  # keep the workers busy while this window is built
            rows, emb = _process_window(scorer, window, cfg.batch_size, dim)
            sink(rows, emb)
            stats.by_status.update(r.status for r in rows)
            if progress is not None:
                progress.update(len(rows))
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        stats.seconds = time.perf_counter() - t0
    return stats
