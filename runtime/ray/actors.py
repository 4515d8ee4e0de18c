"""What runs on the Ray actors: one Scorer each (built from a :class:`ScorerSpec`
resolved on the driver), streaming parts (CLI runs) or dataset batches
(:func:`quasar.runtime.ray.score_dataset`) through the local engine, unchanged."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..job import ScoreJob, ScorerSpec
from ..sources import STATUS_OK, Sample, SourceOptions, iter_items
from ..storage import is_url


# --------------------------------------------------------------------------- the spec
def resolve_spec(bundle: Optional[str] = None, *, model: Optional[str] = None, anchors="text",
                 resolution: Optional[str] = None, device: str = "auto",
                 threads: Optional[int] = None, max_pixels: Optional[int] = None,
                 batch_size: int = 16, precision: str = "fp32", backend: Optional[str] = None,
                 fast_decode: bool = False):
    """(ScorerSpec, Bundle) with the anchor sets, resolution and encoder variant resolved on
    the driver (no ONNX Runtime session is created here). ``precision="auto"`` is resolved
    with the driver's hardware; on a cluster whose nodes differ, name the precision."""
    from quasar.bundle import load_bundle

    from ..default_bundle import resolve_bundle
    from ..scorer import check_fast_decode, resolve_precision, select_anchors

    bdir = resolve_bundle(bundle, model=model)
    b = load_bundle(bdir, verify=True)
    names = select_anchors(b, anchors)
    res = str(resolution if resolution is not None else b.manifest.default_resolution)
    b.preprocess(res)  # validates the resolution against the bundle
    if fast_decode:
        check_fast_decode(b, res)
    choice = resolve_precision(b, precision, backend, device, res)
    spec = ScorerSpec(bundle=str(bdir), anchors=tuple(names), resolution=res, device=device,
                      threads=threads, max_pixels=max_pixels, batch_size=batch_size,
                      precision=choice.precision, backend=choice.backend,
                      variant=choice.variant, fast_decode=bool(fast_decode))
    return spec, b


def spec_of(job: ScoreJob, device: str):
    """(ScorerSpec, Bundle) of a job (``device`` as the Ray run decided it)."""
    return resolve_spec(job.bundle, model=job.model, anchors=job.anchors,
                        resolution=job.resolution, device=device, threads=job.threads,
                        max_pixels=job.max_pixels, batch_size=job.batch_size,
                        precision=job.precision, backend=job.backend,
                        fast_decode=job.fast_decode)


def run_identity(bundle, spec: ScorerSpec, sources: SourceOptions) -> Dict[str, Any]:
    """The run identity of a Ray run: the local path's
    (:func:`quasar.runtime.integrity.identity_of`, the same fields) plus the input options;
    stored in every part's Parquet metadata."""
    from ..integrity import identity_of

    return dict(identity_of(bundle, model=bundle.model, resolution=spec.resolution,
                            anchors=spec.anchors, precision=spec.precision,
                            backend=spec.backend, variant=spec.variant,
                            fast_decode=spec.fast_decode),
                input=sources.describe())


# --------------------------------------------------------------------------- streams
def _part_items(part: dict, sources: SourceOptions, then: Optional[dict] = None
                ) -> Iterator[Any]:
    """The engine items of a part, streamed: loose paths (a URL read by the decode threads),
    or a shard's samples (a remote shard spooled by this actor; ``then``, the next part of
    the call, starts downloading once this one is down - runtime/sources.spooled_samples)."""
    if part["kind"] == "files":
        return iter_items(iter(part["paths"]), sources)
    nxt = then.get("shard") if then is not None and then["kind"] != "files" else None
    nxt = nxt if is_url(nxt) else None
    return sources.samples(part["shard"], then=nxt)


def score_streams(scorer, streams: Iterable[Iterable[Any]], batch_size: int, workers: int,
                  variable_shapes: bool, embeddings: bool = False
                  ) -> Iterator[Tuple[int, list, Optional[list]]]:
    """``(j, rows, embeddings)`` for each input stream ``j`` (paths or :class:`Sample`,
    consumed lazily), in order, as each completes: the local path's engine and row builder
    (:func:`quasar.runtime.pipeline.iter_rows`), unchanged.

    All streams go through **one** engine stream, so decoding of the next one overlaps the
    encoding of this one (an engine per stream would drain and refill the decode-ahead
    pipeline at every boundary). ``rows`` are ``writers.Row`` in input order;
    ``embeddings`` (with ``embeddings=True``), per row, the float32 embedding of an ok row,
    None for a failed one."""
    from ..pipeline import PipelineConfig, iter_rows

    ends: List[int] = []  # inputs before the end of each stream read so far

    def feed() -> Iterator[Any]:
        n = 0
        for items in streams:
            for item in items:
                yield item
                n += 1
            ends.append(n)

    cfg = PipelineConfig(batch_size=batch_size, workers=workers, variable_shapes=variable_shapes)
    rows: list = []
    embs: list = []
    start = 0   # global index of rows[0]
    j = 0       # next stream to hand out

    def ready():
        nonlocal start, j, rows, embs
        while j < len(ends) and start + len(rows) >= ends[j]:
            k = ends[j] - start
            yield j, rows[:k], (embs[:k] if embeddings else None)
            rows, embs = rows[k:], embs[k:]
            start = ends[j]
            j += 1

    for window, emb in iter_rows(scorer, feed(), cfg):
        rows.extend(window)
        if embeddings:
            it = iter(emb)
            embs.extend(next(it) if r.status == STATUS_OK else None for r in window)
        yield from ready()
    yield from ready()  # the stream is exhausted: every end is known (empty streams too)


def score_parts(scorer, parts: Sequence[dict], sources: SourceOptions, batch_size: int,
                workers: int, variable_shapes: bool, embeddings: bool = False
                ) -> Iterator[Tuple[dict, list, Optional[list]]]:
    """``(part, rows, embeddings)`` for each of ``parts``, in order, as each completes, all
    through one engine stream (:func:`score_streams`)."""
    streams = (_part_items(d, sources, parts[i + 1] if i + 1 < len(parts) else None)
               for i, d in enumerate(parts))
    for j, rows, embs in score_streams(scorer, streams,
                                       batch_size, workers, variable_shapes, embeddings):
        yield parts[j], rows, embs


class _ScoringActor:
    """What both actor UDFs hold: one Scorer (one ONNX Runtime session) and how it streams."""

    def __init__(self, spec: ScorerSpec, decode_threads: int, embeddings: bool = False):
        self.scorer = spec.build()
        self.spec = spec
        self.threads = decode_threads
        self.embeddings = embeddings
        self.variable = self.scorer.fixed_size is None

    def _columns(self, pa, rows: list, embs: Optional[list], pad: int = 0) -> Dict[str, Any]:
        """``score_<set>`` (null where failed), ``status``, ``error`` and, when asked,
        ``embedding`` (fixed-size float32 list, null where failed) of ``rows``, followed by
        ``pad`` empty cells."""
        import numpy as np

        cols: Dict[str, Any] = {}
        for a in self.spec.anchors:
            vals = [r.scores.get(a, float("nan")) for r in rows]
            cols[f"score_{a}"] = pa.array(
                [None if v is None or math.isnan(v) else float(v) for v in vals] + [None] * pad,
                pa.float64())
        cols["status"] = pa.array([r.status for r in rows] + [""] * pad, pa.string())
        cols["error"] = pa.array([r.error or "" for r in rows] + [""] * pad, pa.string())
        if self.embeddings:
            dim = int(self.scorer.embed_dim)
            full = np.zeros((len(rows) + pad, dim), np.float32)
            missing = [True] * (len(rows) + pad)
            for i, e in enumerate(embs or []):
                if e is not None:
                    full[i], missing[i] = e, False
            cols["embedding"] = pa.FixedSizeListArray.from_arrays(
                pa.array(full.reshape(-1)), dim, mask=pa.array(missing))
        return cols


class _PartRunner(_ScoringActor):
    """Actor UDF of the CLI pipeline: a batch of part descriptions -> one table per part,
    yielded as each part completes.

    The actor reads its shards itself (streaming, :mod:`quasar.runtime.sources`), decodes in
    ``decode_threads`` threads and embeds with its one session - the local engine, unchanged
    (:func:`score_parts`). Only part descriptions go in and score rows (plus embeddings when
    asked) come out: image bytes never travel through the object store. Every part ends with
    one marker row (``idx`` -1) carrying its row count ``n``, so the driver knows a part is
    complete even when Ray splits a table into several blocks, or when it has no rows."""

    def __init__(self, spec: ScorerSpec, sources: SourceOptions, decode_threads: int,
                 embeddings: bool = False):
        super().__init__(spec, decode_threads, embeddings)
        self.sources = sources

    def __call__(self, batch):
        import pyarrow as pa

        for d, rows, embs in score_parts(self.scorer, batch.to_pylist(), self.sources,
                                         self.spec.batch_size, self.threads, self.variable,
                                         self.embeddings):
            yield self._table(pa, d, rows, embs)

    def _table(self, pa, d: dict, rows: list, embs: Optional[list]):
        from quasar.text import encode_path

        n = len(rows)
        cols = {"part": pa.array([d["part"]] * (n + 1), pa.string()),
                "idx": pa.array(list(range(n)) + [-1], pa.int64()),
                "n": pa.array([-1] * n + [n], pa.int64()),
                "path": pa.array([encode_path(r.path) for r in rows] + [""], pa.string())}
        cols.update(self._columns(pa, rows, embs, pad=1))
        return pa.table(cols)


class _DatasetScorer(_ScoringActor):
    """Actor UDF of :func:`score_dataset`: adds score_<set>, status, error (and embedding)
    columns."""

    def __init__(self, spec: ScorerSpec, column: str, id_column: Optional[str],
                 decode_threads: int, embeddings: bool = False):
        super().__init__(spec, decode_threads, embeddings)
        self.column = column
        self.id_column = id_column

    def __call__(self, table):
        import pyarrow as pa

        values = table.column(self.column).to_pylist()
        ids = table.column(self.id_column).to_pylist() if self.id_column else [None] * len(values)
        items: List[Any] = []
        for k, (v, i) in enumerate(zip(values, ids)):
            sid = str(i) if i is not None else f"<row {k} of a batch>"
            if isinstance(v, str):
                items.append(v if i is None else Sample(id=sid, path=v))
            elif isinstance(v, dict) and v.get("bytes") is not None:
                items.append(Sample(id=sid, data=v["bytes"]))
            elif isinstance(v, (bytes, bytearray)) and len(v):
                items.append(Sample(id=sid, data=bytes(v)))
            else:
                items.append(Sample(id=sid, status="empty_file",
                                    error=f"{sid}: no image bytes in column {self.column!r}"))
        ((_, rows, embs),) = score_streams(self.scorer, [items], self.spec.batch_size,
                                           self.threads, self.variable, self.embeddings)
        for name, col in self._columns(pa, rows, embs).items():
            table = table.append_column(name, col)
        return table
