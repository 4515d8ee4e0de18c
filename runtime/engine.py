"""THE embedding engine: inputs in, embeddings out, in input order, in flat memory.

Every path that embeds images runs here - :class:`~quasar.runtime.scorer.Scorer`, the
``quasar score`` pipeline, evaluate's embedding cache, and (per batch) the Ray actors.
Nothing else batches or retries.

How a stream of inputs is processed:

* **Decode ahead, bounded and paced.** Inputs are pulled lazily from the iterator and
  decoded + preprocessed by ``load`` in a thread pool (Pillow and numpy release the GIL),
  overlapping inference. At most :attr:`EngineConfig.in_flight` inputs are decoded or
  decoding at once, so memory stays flat on millions of inputs; at the start the read-ahead
  is :attr:`EngineConfig.lookahead` and grows by one input per input embedded, so that
  decoding is spread over the inferences instead of arriving in one burst (a burst of
  decodes during one inference halves that inference: its threads wait for the one whose
  core a decode took - measured at native size, see docs/benchmark.md).
* **Bounded bytes too.** Inputs that carry their encoded bytes (dataset samples: a tar
  member or a Parquet cell may be up to 256 MB) also count against
  :attr:`EngineConfig.max_pending_bytes`: no new input is submitted while the undecoded
  ones hold more (at least one always is). Once decoded, an input is kept for its row
  without its bytes (``released()``), and a failure keeps no traceback (its frames would
  pin the bytes in a reference cycle until the cyclic GC runs).
* **Windows.** Inputs are handed out in *windows* of consecutive inputs (``batch_size``
  when every input has one shape; ``batch_size * group_factor`` when shapes vary, e.g. at
  ``native`` resolution, so that equal shapes can meet; a window closes as soon as its
  inputs make whole batches of one shape each - one batch when every input has one shape -
  so that inference starts after one batch of decodes rather than a whole window), closed
  early when the decoded pixels exceed ``max_window_bytes``.
* **Batches by shape.** Inside a window, inputs are grouped by H×W and each group is run in
  batches of at most ``batch_size``: nothing is padded or resized behind the user's back.
* **Failure isolation.** A decode failure is that input's error. A batch that fails in
  ``encode`` is retried input by input, so only the inputs that really fail become errors;
  a row of the encoder's output that is not finite is an error too. Errors are
  :class:`~quasar.errors.InputFailure` subclasses carrying their row ``status``.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import (Any, Callable, Deque, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)

import numpy as np

from quasar.errors import ImageDecodeError, InferenceError, QuasarError, error_status

from .images import check_path, describe_source

log = logging.getLogger(__name__)

Load = Callable[[Any], np.ndarray]
Encode = Callable[[np.ndarray], np.ndarray]
Decoded = Tuple[Optional[np.ndarray], Optional[Exception]]  # pixels [3,H,W], or the error


def default_workers() -> int:
    """Decode threads: min(4, CPUs)."""
    return max(1, min(4, os.cpu_count() or 1))


def describe(item: Any) -> str:
    """A short name of an input for messages (its path, or its type and size)."""
    ident = getattr(item, "id", None)  # a FailedInput, a dataset Sample
    if isinstance(ident, str):
        return ident
    return describe_source(getattr(item, "source", item))


@dataclass(frozen=True, eq=False)
class FailedInput:
    """An input that failed before it could be read (an unlistable folder, a file that is an
    output of this run...): the engine returns ``error`` as its result, the row's ``path``
    is ``id``."""

    id: str
    error: Exception


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and overlaps work (see the module docstring)."""

    batch_size: int = 16
    workers: int = field(default_factory=default_workers)
    variable_shapes: bool = False
    group_factor: int = 8
    max_window_bytes: int = 1 << 30
    max_pending_bytes: int = 384 << 20

    def __post_init__(self) -> None:
        for name in ("batch_size", "workers", "group_factor", "max_window_bytes",
                     "max_pending_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be an integer >= 1, got {v!r}")

    @property
    def window(self) -> int:
        return self.batch_size * (self.group_factor if self.variable_shapes else 1)

    @property
    def lookahead(self) -> int:
        """Inputs decoded ahead of the batch being assembled (and the read-ahead at start)."""
        return max(self.batch_size, 2 * self.workers)

    @property
    def in_flight(self) -> int:
        """Inputs submitted for decoding and not yet in a window, at most."""
        return self.window + self.lookahead


@dataclass
class Window:
    """Consecutive inputs with their results: ``embeddings`` float32 [n, D] (NaN rows where
    an input failed) and ``errors`` (None, or the input's error)."""

    items: List[Any]
    embeddings: np.ndarray
    errors: List[Optional[Exception]]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)


def _nbytes(item: Any) -> int:
    """Encoded bytes an input holds (0 for a path)."""
    return getattr(item, "nbytes", 0) if not isinstance(item, str) else 0


def _released(item: Any) -> Any:
    """The input as kept for its row once decoded (a sample without its bytes)."""
    release = getattr(item, "released", None) if not isinstance(item, str) else None
    return release() if release is not None else item


def shape_batches(shapes: Sequence[Optional[tuple]], batch_size: int) -> List[List[int]]:
    """How the engine batches a window: the indices of its inputs grouped by shape (shapes
    in first-seen order; ``None``, a failed input, in no batch), each group cut into
    batches of at most ``batch_size``. Nothing is padded or resized."""
    groups: "OrderedDict[tuple, List[int]]" = OrderedDict()
    for i, shape in enumerate(shapes):
        if shape is not None:
            groups.setdefault(shape, []).append(i)
    return [idx[s:s + batch_size] for idx in groups.values()
            for s in range(0, len(idx), batch_size)]


def whole_batches(decoded: Sequence[Decoded], batch_size: int) -> bool:
    """Would :func:`shape_batches` run the decoded inputs in full batches only (at least
    one; failed inputs need no batch)?"""
    batches = shape_batches([None if arr is None else arr.shape for arr, _ in decoded],
                            batch_size)
    return bool(batches) and all(len(b) == batch_size for b in batches)


def drop_tracebacks(exc: BaseException) -> BaseException:
    """``exc`` without the tracebacks of it and its causes: their frames hold the input's
    bytes and the exception itself, a reference cycle that only the cyclic GC would free."""
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        if e.__context__ is not None and e.__cause__ is None:
            e.__context__.__traceback__ = None
        e = e.__cause__ or e.__context__
    return exc


def as_input_failure(item: Any, exc: BaseException) -> Exception:
    """``exc`` as an error that names the input and carries a row status."""
    if isinstance(exc, QuasarError):
        return exc  # type: ignore[return-value]
    name = describe(item)
    msg = str(exc)
    err = ImageDecodeError(msg if name in msg else f"{name}: {type(exc).__name__}: {msg}")
    err.status = error_status(exc)  # e.g. read_error for an OSError
    return err


class Engine:
    """Embeds inputs with ``load`` (item -> float32 [3, H, W], thread-safe) and ``encode``
    (float32 [N, 3, H, W] of one H×W -> [N, dim])."""

    def __init__(self, load: Load, encode: Encode, dim: int,
                 cfg: Optional[EngineConfig] = None) -> None:
        self.load = load
        self.encode = encode
        self.dim = int(dim)
        self.cfg = cfg or EngineConfig()

    @classmethod
    def for_scorer(cls, scorer: Any, cfg: Optional[EngineConfig] = None) -> "Engine":
        """An engine over anything with the Scorer API (``load_image``, ``embed_pixels``,
        ``embed_dim``)."""
        return cls(scorer.load_image, scorer.embed_pixels, scorer.embed_dim, cfg)

    # ---------------------------------------------------------------- one input / one batch
    def decode(self, item: Any) -> Decoded:
        """Decode + preprocess one input; never raises (a failure is returned)."""
        if isinstance(item, FailedInput):
            return None, item.error
        try:
            if isinstance(item, (str, os.PathLike)):
                check_path(item)  # missing, link, FIFO, permission: a specific row status
            arr = np.asarray(self.load(item), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - one bad input must never stop a run
            return None, drop_tracebacks(as_input_failure(item, exc))
        if arr.ndim != 3 or arr.shape[0] != 3:
            return None, ImageDecodeError(f"{describe(item)}: preprocessing gave shape "
                                          f"{list(arr.shape)}, expected [3, H, W]")
        return arr, None

    def _encode_group(self, items: List[Any], arrays: List[np.ndarray]
                      ) -> List[Tuple[Optional[np.ndarray], Optional[Exception]]]:
        """Embeddings of same-shape arrays; a failed batch is retried input by input."""
        try:
            emb = np.asarray(self.encode(np.stack(arrays)), dtype=np.float32)
            if emb.shape != (len(arrays), self.dim):
                raise RuntimeError(f"the encoder returned shape {list(emb.shape)} for "
                                   f"{len(arrays)} inputs, expected [{len(arrays)}, {self.dim}]")
        except Exception as exc:  # noqa: BLE001
            if len(arrays) > 1:
                log.debug("batch of %d failed (%s); retrying input by input", len(arrays), exc)
                return [r for it, a in zip(items, arrays) for r in self._encode_group([it], [a])]
            cause = exc.__cause__ if isinstance(exc, InferenceError) and exc.__cause__ else exc
            err = InferenceError(f"{describe(items[0])}: the encoder failed on this image "
                                 f"(input {arrays[0].shape[1]}x{arrays[0].shape[2]}): "
                                 f"{type(cause).__name__}: {cause}")
            err.__cause__ = drop_tracebacks(exc)  # its frames hold the batch's pixels
            return [(None, err)]
        # A valid embedding is finite and has a direction: then its score against the
        # (validated, unit) anchors is finite too, so no later step needs to check scores.
        out: List[Tuple[Optional[np.ndarray], Optional[Exception]]] = []
        finite = np.isfinite(emb).all(axis=1)
        nonzero = (emb != 0).any(axis=1)
        for it, e, ok, nz in zip(items, emb, finite, nonzero):
            if ok and nz:
                out.append((e, None))
                continue
            what = ("a non-finite embedding (NaN/inf)" if not ok else
                    "an all-zero embedding: it has no direction, so its score is not finite")
            out.append((None, InferenceError(
                f"{describe(it)}: the encoder returned {what}; the bundle or the image is "
                "broken - check the bundle with `quasar models` or re-export it")))
        return out

    def embed_decoded(self, items: List[Any], decoded: List[Decoded]
                      ) -> Tuple[np.ndarray, List[Optional[Exception]]]:
        """Embeddings [n, dim] (NaN where failed) and errors of decoded inputs, grouped by
        shape and run in batches of at most ``batch_size``."""
        n = len(items)
        out = np.full((n, self.dim), np.nan, dtype=np.float32)
        errors: List[Optional[Exception]] = [err for _, err in decoded]
        shapes = [None if err is not None else arr.shape for arr, err in decoded]
        for chunk in shape_batches(shapes, self.cfg.batch_size):
            results = self._encode_group([items[i] for i in chunk],
                                         [decoded[i][0] for i in chunk])
            for i, (e, err) in zip(chunk, results):
                if err is None:
                    out[i] = e
                else:
                    errors[i] = err
        return out, errors

    # ---------------------------------------------------------------- streams
    def windows(self, items: Iterable[Any]) -> Iterator[Window]:
        """Windows of results for ``items`` (consumed lazily), in input order.

        KeyboardInterrupt stops decoding promptly; windows already yielded are complete.
        """
        cfg = self.cfg
        it = iter(items)
        if cfg.workers <= 1:
            yield from self._windows_serial(it)
            return
        pending: Deque[Tuple[Any, Future, int]] = deque()
        exhausted = False
        held = 0  # encoded bytes of the pending inputs
        embedded = 0  # inputs of earlier windows: the read-ahead grows with them
        pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="quasar-decode")

        def top_up() -> None:
            nonlocal exhausted, held
            cap = min(cfg.in_flight, cfg.lookahead + embedded)
            while not exhausted and len(pending) < cap and \
                    (held < cfg.max_pending_bytes or not pending):
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    return
                n = _nbytes(item)
                held += n
                pending.append((item, pool.submit(self.decode, item), n))

        try:
            while True:
                top_up()
                if not pending:
                    break
                items_w: List[Any] = []
                decoded: List[Decoded] = []
                nbytes = 0
                while pending and len(items_w) < cfg.window and nbytes < cfg.max_window_bytes:
                    item, fut, n = pending.popleft()
                    dec = fut.result()
                    held -= n
                    items_w.append(_released(item))
                    del item, fut
                    decoded.append(dec)
                    if dec[0] is not None:
                        nbytes += dec[0].nbytes
                    top_up()  # keep the workers busy while this window is built
                    if whole_batches(decoded, cfg.batch_size):
                        break  # nothing left to group: start inference now
                emb, errs = self.embed_decoded(items_w, decoded)
                embedded += len(items_w)
                yield Window(items_w, emb, errs)
        finally:
            for _, fut, _ in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _windows_serial(self, it: Iterator[Any]) -> Iterator[Window]:
        cfg = self.cfg
        done = False
        while not done:
            items_w: List[Any] = []
            decoded: List[Decoded] = []
            nbytes = 0
            while len(items_w) < cfg.window and nbytes < cfg.max_window_bytes:
                try:
                    item = next(it)
                except StopIteration:
                    done = True
                    break
                dec = self.decode(item)
                items_w.append(_released(item))
                del item
                decoded.append(dec)
                if dec[0] is not None:
                    nbytes += dec[0].nbytes
            if items_w:
                emb, errs = self.embed_decoded(items_w, decoded)
                yield Window(items_w, emb, errs)

    def run(self, items: Iterable[Any]) -> Window:
        """All results of ``items`` as one window (for inputs that fit in memory)."""
        items_all: List[Any] = []
        embs: List[np.ndarray] = []
        errors: List[Optional[Exception]] = []
        for w in self.windows(items):
            items_all.extend(w.items)
            embs.append(w.embeddings)
            errors.extend(w.errors)
        emb = np.concatenate(embs) if embs else np.zeros((0, self.dim), dtype=np.float32)
        return Window(items_all, emb, errors)
