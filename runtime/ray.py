"""Score on a Ray cluster: ``quasar score ... --engine ray`` and :func:`score_dataset`.

Needs the optional extra ``quasar[ray]``; nothing on the local path imports this module or
``ray``.

Pipeline (Ray Data, streaming)::

    parts (driver) -> score (actor pool: read + decode + embed + score) -> driver writes parts

* **Parts.** Every input shard (WebDataset ``.tar``, ``.parquet`` file) is one *part*; loose
  image files are cut into parts of ``files_per_part`` paths in input order. The output is a
  directory with one Parquet file per part, named after its shard
  (``shard-00007.tar`` -> ``shard-00007.parquet``; ``files-000003.parquet`` for loose files).
* **Score**: an actor pool over a dataset of part descriptions; each actor holds one
  :class:`~quasar.runtime.scorer.Scorer` (one ONNX Runtime session, CUDA with
  ``gpus_per_worker > 0``). A call brings several parts (:func:`parts_per_call`); the actor
  reads their shards itself with :mod:`quasar.runtime.sources` (the local path's readers)
  and streams all their inputs through one local engine (:func:`score_parts`: decoding in
  ``decode_cpus`` threads, batching, shape grouping, per-input failure rows with the local
  path's statuses and messages), yielding one table per part as it completes. Image bytes
  never travel through the object store, and the decode-ahead pipeline is not drained at
  every part boundary.
* **Write**: the driver collects rows per part (deduplicated by position, and a part
  already written is never written again when Ray retries a call whose actor died) and,
  once a part has all its rows, writes its embeddings (``--save-embeddings DIR``) and then
  the part to temp names renamed into place. A part is therefore either complete or absent:
  a rerun (``--resume``) skips finished parts and redoes unfinished ones whole, so every
  input appears exactly once. Each part carries the run identity in its Parquet metadata
  (key ``quasar.run``: bundle identity, model, resolution, anchor sets, precision, backend,
  variant, fast decode, quasar version, input options); a rerun with another identity is
  refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from quasar.bundle.atomic import atomic_output
from quasar.errors import MissingDependencyError, QuasarError, RayRunError

from .sources import STATUS_OK, Sample, SourceOptions, check_parquet_columns

log = logging.getLogger(__name__)

RAY_HINT = 'the Ray engine needs Ray Data: pip install "quasar-iqa[ray]" (or pip install "ray[data]")'
RUN_META_KEY = b"quasar.run"
PART_SUFFIX = ".parquet"
TMP_SUFFIX = ".tmp"  # quasar.bundle.atomic temp files: .<name>.<pid>-<random>.tmp
# Test seam: seconds the driver waits after writing each part (lets a test kill it between
# parts); unset in normal use.
_PART_DELAY_ENV = "QUASAR_RAY_PART_DELAY"


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(RAY_HINT) from exc
    return ray


# --------------------------------------------------------------------------- the engine seam
def _variable_shapes(scorer) -> bool:
    try:
        return scorer.manifest.preprocess[str(scorer.resolution)].fixed_size is None
    except Exception:  # noqa: BLE001
        return str(scorer.resolution) != "224"


# --------------------------------------------------------------------------- run identity
@dataclass(frozen=True)
class ScorerSpec:
    """What an actor needs to build its Scorer (picklable; resolved on the driver, so every
    actor runs the encoder the run identity names)."""

    bundle: str
    anchors: Tuple[str, ...]
    resolution: str
    device: str = "auto"
    threads: Optional[int] = None
    max_pixels: Optional[int] = None
    batch_size: int = 16
    precision: str = "fp32"          # resolved: fp32 | int8 | bf16 | fp16 (never auto)
    backend: str = "onnxruntime"
    variant: Optional[str] = None    # the manifest's variant key (None: the fp32 encoder)
    fast_decode: bool = False

    def build(self):
        from .scorer import Scorer

        scorer = Scorer.from_bundle(self.bundle, anchors=list(self.anchors),
                                    resolution=self.resolution, device=self.device,
                                    threads=self.threads, max_pixels=self.max_pixels,
                                    batch_size=self.batch_size, precision=self.precision,
                                    backend=self.backend, fast_decode=self.fast_decode)
        got = scorer.choice.variant
        if got != self.variant:
            import socket

            raise RayRunError(
                f"the worker on {socket.gethostname()} chose encoder {got or 'fp32'} for "
                f"--precision {self.precision}, the driver chose {self.variant or 'fp32'} "
                "(different hardware or backends): install the same backends on every node, "
                "or name a precision every node runs")
        return scorer


def resolve_spec(bundle: Optional[str] = None, *, model: Optional[str] = None, anchors="text",
                 resolution: Optional[str] = None, device: str = "auto",
                 threads: Optional[int] = None, max_pixels: Optional[int] = None,
                 batch_size: int = 16, precision: str = "fp32", backend: Optional[str] = None,
                 fast_decode: bool = False):
    """(ScorerSpec, Bundle) with the anchor sets, resolution and encoder variant resolved on
    the driver (no ONNX Runtime session is created here). ``precision="auto"`` is resolved
    with the driver's hardware; on a cluster whose nodes differ, name the precision."""
    from quasar.bundle import load_bundle
    from .default_bundle import resolve_bundle
    from .scorer import check_fast_decode, resolve_precision, select_anchors

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


#: identity keys that must match for a rerun to continue an output (absent in older parts:
#: the default)
SAME_RUN = {"bundle_sha256": None, "model": None, "resolution": None, "anchors": None,
            "precision": "fp32", "backend": "onnxruntime", "variant": None,
            "fast_decode": False, "input": None}


def run_identity(bundle, spec: ScorerSpec, sources: SourceOptions) -> Dict[str, Any]:
    """What makes two runs' rows comparable (the local path's identity,
    :func:`quasar.runtime.integrity.run_identity`, plus the input options); stored in every
    part's Parquet metadata."""
    from .integrity import quasar_version

    return {
        "quasar_version": quasar_version(),
        "bundle_sha256": bundle.sha256,
        "model": bundle.model,
        "resolution": spec.resolution,
        "anchors": list(spec.anchors),
        "precision": spec.precision,
        "backend": spec.backend,
        "variant": spec.variant,
        "fast_decode": spec.fast_decode,
        "input": sources.describe(),
    }


# --------------------------------------------------------------------------- parts
@dataclass
class Part:
    """One unit of output and of resumption."""

    name: str                 # output file stem
    kind: str                 # webdataset | parquet | files
    shard: str = ""           # the shard file (webdataset / parquet)
    paths: List[str] = field(default_factory=list)   # loose files (kind files)

    @property
    def key(self) -> str:
        """What the part was made from (checked on resume)."""
        if self.kind != "files":
            return self.shard
        h = hashlib.sha1("\n".join(self.paths).encode("utf-8", "surrogateescape")).hexdigest()
        return f"files:{len(self.paths)}:{h}"

    @property
    def file(self) -> str:
        return self.name + PART_SUFFIX


def _stem(path: str) -> str:
    base = os.path.basename(path.rstrip("/")) or "shard"
    for ext in (".tar", ".parquet", ".pq"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._=-]", "_", base) or "shard"


def plan_parts(specs: Sequence[str], sources: SourceOptions, files_per_part: int = 1000) -> List[Part]:
    """Parts of a run, in input order: one per shard, loose files in chunks."""
    from .inputs import iter_inputs

    parts: List[Part] = []
    chunk: List[str] = []
    n_files = 0

    def flush():
        nonlocal chunk, n_files
        if chunk:
            parts.append(Part(f"files-{n_files:06d}", "files", paths=chunk))
            n_files += 1
            chunk = []

    for p in iter_inputs(list(specs)):
        kind = sources.kind(p)
        if kind == "image":
            chunk.append(p)
            if len(chunk) >= files_per_part:
                flush()
        else:
            if kind == "parquet":
                check_parquet_columns(p, sources.image_column, sources.id_column)
            parts.append(Part("", kind, shard=p))
    flush()
    stems = Counter(_stem(p.shard) for p in parts if p.kind != "files")
    taken = {p.name for p in parts if p.kind == "files"}
    for p in parts:
        if p.kind == "files":
            continue
        stem = _stem(p.shard)
        if stems[stem] > 1 or stem in taken:
            stem += "-" + hashlib.sha1(os.path.abspath(p.shard).encode("utf-8", "surrogateescape")).hexdigest()[:8]
        p.name = stem
        taken.add(stem)
    return parts


def rows_digest(rows: Iterable[dict], anchors: Sequence[str]) -> str:
    """sha256 of a part's cells (path, scores, status, error; one JSON line per row), kept
    in its metadata: a ``--resume`` recomputes it, so an edited or cut part is redone."""
    h = hashlib.sha256()
    for r in rows:
        cells = [r["path"]] + [r[f"score_{a}"] for a in anchors] + [r["status"], r["error"] or ""]
        h.update(json.dumps(cells).encode("ascii") + b"\n")
    return h.hexdigest()


def part_problem(path: str, meta: Dict[str, Any], anchors: Sequence[str]) -> Optional[str]:
    """Why a finished part cannot be trusted, or None: its rows against the count and the
    checksum in its metadata, ids unique, ok rows with finite scores in [0, 1]."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure means "unreadable"
        return f"unreadable ({exc})"
    cols = ["path"] + [f"score_{a}" for a in anchors] + ["status", "error"]
    if rows and list(rows[0]) != cols:
        return f"columns {list(rows[0])}, expected {cols}"
    if len(rows) != meta.get("rows"):
        return f"{len(rows)} rows, its metadata says {meta.get('rows')}"
    if len({r["path"] for r in rows}) != len(rows):
        return "the same id on several rows"
    for r in rows:
        vals = [r[f"score_{a}"] for a in anchors]
        if r["status"] == STATUS_OK and not all(
                isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals):
            return f"row {r['path']!r}: status ok with scores {vals}"
        if not r["status"]:
            return f"row {r['path']!r}: no status"
    if meta.get("rows_sha256") != rows_digest(rows, anchors):
        return "its cells do not match the checksum in its metadata (edited?)"
    return None


def _embeddings_problem(emb_dir: str, part: "Part", path: str, dim: int) -> Optional[str]:
    """Why a finished part's embedding files cannot be trusted, or None."""
    import numpy as np
    import pyarrow.parquet as pq

    npy, paths = _embedding_files(emb_dir, part)
    if not (os.path.exists(npy) and os.path.exists(paths)):
        return "its embeddings are missing"
    try:
        t = pq.read_table(path, columns=["path", "status"]).to_pylist()
        ok = [r["path"] for r in t if r["status"] == STATUS_OK]
        arr = np.load(npy, mmap_mode="r")
        with open(paths, encoding="utf-8") as f:
            listed = f.read().split("\n")[:-1]
    except (OSError, ValueError) as exc:
        return f"unreadable embeddings ({exc})"
    if arr.shape != (len(ok), dim) or listed != ok:
        return f"embeddings of shape {arr.shape} for {len(ok)} ok rows"
    return None


def read_part_meta(path: str) -> Optional[Dict[str, Any]]:
    """The ``quasar.run`` metadata of a finished part (None when absent/unreadable)."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
        return json.loads(md[RUN_META_KEY])
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- part stage
def _part_items(part: dict, sources: SourceOptions) -> Iterator[Any]:
    """The engine items of a part, streamed: loose paths, or a shard's samples."""
    if part["kind"] == "files":
        return iter(part["paths"])
    return sources.samples(part["shard"])


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
    from .pipeline import PipelineConfig, iter_rows

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
    for j, rows, embs in score_streams(scorer, (_part_items(d, sources) for d in parts),
                                       batch_size, workers, variable_shapes, embeddings):
        yield parts[j], rows, embs


class _ScoringActor:
    """What both actor UDFs hold: one Scorer (one ONNX Runtime session) and how it streams."""

    def __init__(self, spec: ScorerSpec, decode_threads: int, embeddings: bool = False):
        self.scorer = spec.build()
        self.spec = spec
        self.threads = decode_threads
        self.embeddings = embeddings
        self.variable = _variable_shapes(self.scorer)

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


# --------------------------------------------------------------------------- cluster
@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run (``--address``, ``--workers``, ``--gpus-per-worker``,
    ``--decode-cpus``)."""

    address: Optional[str] = None       # None: a local Ray started (and stopped) by us
    workers: Optional[int] = None       # actors; None: GPUs / gpus_per_worker, else 1 per node
    gpus_per_worker: float = 0.0
    decode_cpus: float = 1.0            # CPUs reserved per actor (its decode threads)
    files_per_part: int = 1000

    def __post_init__(self) -> None:
        if self.workers is not None and int(self.workers) < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if float(self.gpus_per_worker) < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if float(self.decode_cpus) <= 0:
            raise ValueError(f"--decode-cpus must be > 0, got {self.decode_cpus}")
        if int(self.files_per_part) < 1:
            raise ValueError(f"--files-per-part must be >= 1, got {self.files_per_part}")

    @property
    def decode_threads(self) -> int:
        """Decode threads in an actor: its CPUs, at least 2 (decoding overlaps inference)."""
        return max(2, int(math.ceil(self.decode_cpus)))


def connect(address: Optional[str] = None, quiet: bool = True) -> bool:
    """Connect to (``auto`` / ``HOST:PORT``) or start (None) a Ray instance; True when this
    call started it (the caller then shuts it down)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kw: Dict[str, Any] = {"logging_level": logging.ERROR if quiet else logging.WARNING,
                          "configure_logging": True}
    if address:
        ray.init(address=address, **kw)
    else:
        # Ray starts its workers at nice 15 so that its own daemons win the CPU; on a machine
        # the scoring actor should own, every wakeup of the driver, the raylet or Ray Data's
        # bookkeeping actors then preempts ONNX Runtime's threads (measured on 2 vCPUs: the
        # actor 10 % slower per image than the same engine in a plain process). Our local
        # instance runs its workers at normal priority.
        ray.init(include_dashboard=False, _system_config={"worker_niceness": 0}, **kw)
        _stop_autoscaler_monitor(ray)
    return True


def _stop_autoscaler_monitor(ray) -> None:
    """Stop the autoscaler monitor of the single-node instance we just started: it has
    nothing to scale, and it ignores SIGTERM for a second, which ``ray.shutdown`` waits out
    (1.0 of its 1.35 s measured here). SIGKILL, because on SIGTERM it reports "the
    autoscaler failed" to the driver's console. Best effort: Ray's node object is private,
    so any surprise leaves the monitor running."""
    try:
        node = ray._private.worker._global_node
        for info in node.all_processes.get("monitor", []):
            info.process.kill()
    except Exception as exc:  # noqa: BLE001
        log.debug("could not stop Ray's autoscaler monitor early: %s", exc)


def _default_workers(ray, opts: RayOptions) -> int:
    if opts.workers is not None:
        return int(opts.workers)
    res = ray.cluster_resources()
    if opts.gpus_per_worker > 0:
        gpus = float(res.get("GPU", 0))
        if gpus < opts.gpus_per_worker:
            raise RayRunError(f"--gpus-per-worker {opts.gpus_per_worker}: the Ray cluster has "
                              f"{gpus:g} GPUs; add GPU nodes or use --gpus-per-worker 0")
        return max(1, int(gpus // opts.gpus_per_worker))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return max(1, len(nodes))


#: most parts one actor call streams through one engine
MAX_PARTS_PER_CALL = 16


def parts_per_call(n_parts: int, n_actors: int) -> int:
    """Parts per actor call: enough that the decode-ahead pipeline rarely restarts (each call
    is one engine stream), few enough that every actor gets about two calls (a slow actor
    holds back little); a single actor has no one to balance with, so it takes the most."""
    calls = 1 if n_actors <= 1 else 2 * n_actors
    return max(1, min(MAX_PARTS_PER_CALL, math.ceil(n_parts / calls)))


def _actor_args(opts: RayOptions, spec: ScorerSpec, ray) -> Dict[str, Any]:
    n = _default_workers(ray, opts)
    # two calls in flight per actor: one running, the next queued (no idle gap between
    # calls, and a slow actor holds back at most one call)
    kw: Dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=n,
                                                                max_tasks_in_flight_per_actor=2),
                          "num_cpus": float(opts.decode_cpus)}
    if opts.gpus_per_worker > 0:
        kw["num_gpus"] = float(opts.gpus_per_worker)
    return kw


def _quiet_data_context(show_progress: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    if not show_progress:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx.enable_progress_bars = bool(show_progress)
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = bool(show_progress)


# --------------------------------------------------------------------------- the CLI run
@dataclass
class RunReport:
    """Counts of a Ray run."""

    by_status: Counter = field(default_factory=Counter)
    parts_written: int = 0
    parts_skipped: int = 0
    parts_redone: int = 0   # finished parts that did not verify on --resume
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def failed(self) -> int:
        return sum(v for k, v in self.by_status.items() if k != STATUS_OK)


def _write_part(pa, out_dir: str, part: Part, rows: Dict[int, dict], anchors: Sequence[str],
                identity: Dict[str, Any], emb_dir: Optional[str] = None, dim: int = 0) -> None:
    """Write a finished part: its embeddings first (when asked), then the Parquet part - the
    file whose presence means "done" - each to a temp name renamed into place."""
    import numpy as np
    import pyarrow.parquet as pq

    from quasar.bundle.atomic import atomic_write

    order = [rows[i] for i in sorted(rows)]
    if emb_dir is not None:
        ok = [r for r in order if r["status"] == STATUS_OK]
        emb = np.stack([r["embedding"] for r in ok]) if ok else np.zeros((0, dim), np.float32)
        npy, paths = _embedding_files(emb_dir, part)
        with atomic_write(npy, "wb") as f:
            np.save(f, np.ascontiguousarray(emb, dtype="<f4"))
        with atomic_write(paths, "w") as f:
            f.write("".join(r["path"] + "\n" for r in ok))
    cols = {"path": pa.array([r["path"] for r in order], pa.string())}
    for a in anchors:
        cols[f"score_{a}"] = pa.array([r[f"score_{a}"] for r in order], pa.float64())
    cols["status"] = pa.array([r["status"] for r in order], pa.string())
    cols["error"] = pa.array([r["error"] or "" for r in order], pa.string())
    meta = dict(identity, part=part.name, source=part.key, rows=len(order),
                rows_sha256=rows_digest(order, anchors))
    table = pa.table(cols).replace_schema_metadata({RUN_META_KEY: json.dumps(meta).encode()})
    with atomic_output(os.path.join(out_dir, part.file)) as tmp:  # temp + fsync + rename
        pq.write_table(table, str(tmp))


def _embedding_files(emb_dir: str, part: Part) -> Tuple[str, str]:
    """``<emb_dir>/<part>.npy`` (float32 [n_ok, D], the part's ok rows in order) and
    ``<emb_dir>/<part>.paths.txt`` (their ``path`` cells, one per line)."""
    return (os.path.join(emb_dir, part.name + ".npy"),
            os.path.join(emb_dir, part.name + ".paths.txt"))


def _clean_temps(d: str) -> None:
    for n in os.listdir(d):  # an unfinished file of a killed run: redone whole
        if n.startswith(".") and n.endswith(TMP_SUFFIX):
            os.remove(os.path.join(d, n))


def _foreign_meta(path: str) -> Optional[Dict[str, Any]]:
    """The part's ``quasar.run`` metadata; raises for a readable Parquet file that is not a
    quasar part (someone else's file: never replaced); None for an unreadable one."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001 - a cut or garbled part: redone
        return None
    if RUN_META_KEY not in md:
        raise RayRunError(f"{path} is not a part of a quasar run (no quasar.run metadata); "
                          "move it away or choose another --out")
    try:
        return json.loads(md[RUN_META_KEY])
    except ValueError:
        return None


def _check_same_run(path: str, meta: Dict[str, Any], part: Part,
                    identity: Dict[str, Any]) -> None:
    diff = [k for k, default in SAME_RUN.items()
            if meta.get(k, default) != identity.get(k, default)]
    if diff:
        raise RayRunError(
            f"{path} was scored with other settings ({', '.join(diff)}: "
            f"{[meta.get(k, SAME_RUN[k]) for k in diff]} vs {[identity.get(k) for k in diff]}); "
            "resume with the same bundle and options, --overwrite, or choose another --out")
    if meta.get("source") != part.key:
        raise RayRunError(
            f"{path} was made from {meta.get('source')!r}, this run maps that part to "
            f"{part.key!r} (inputs changed?); --overwrite or choose another --out")


def verify_part(out_dir: str, part: Part, identity: Dict[str, Any],
                emb_dir: Optional[str] = None, dim: int = 0) -> Optional[str]:
    """Why the finished ``part`` must be redone (None: it verifies). Raises for a part of
    another run (other settings, other source) or a file that is not a quasar part."""
    path = os.path.join(out_dir, part.file)
    meta = _foreign_meta(path)
    if meta is None:
        return "unreadable, or no readable run identity"
    _check_same_run(path, meta, part, identity)
    why = part_problem(path, meta, list(identity.get("anchors") or []))
    if why is None and emb_dir is not None:
        why = _embeddings_problem(emb_dir, part, path, dim)
    return why


def prepare_output(out_dir: str, parts: List[Part], identity: Dict[str, Any], *,
                   resume: bool, overwrite: bool, emb_dir: Optional[str] = None,
                   dim: int = 0, report: Optional["RunReport"] = None) -> List[Part]:
    """Check / clean the output directory; return the parts still to compute: those not
    finished, and (``--resume``) those whose part or embedding files do not verify
    (:func:`verify_part`: logged, redone whole)."""
    os.makedirs(out_dir, exist_ok=True)
    _clean_temps(out_dir)
    if emb_dir is not None:
        os.makedirs(emb_dir, exist_ok=True)
        _clean_temps(emb_dir)
    names = os.listdir(out_dir)
    done = {n for n in names if n.endswith(PART_SUFFIX) and not n.startswith(".")}
    if done and not resume and not overwrite:
        raise RayRunError(f"{out_dir} already holds {len(done)} scored parts: add --resume to "
                          "continue that run, --overwrite to replace it, or choose another --out")
    if overwrite:  # every part is rewritten (temp + rename): nothing is deleted up front
        return list(parts)
    todo = []
    for p in parts:
        if p.file not in done:
            todo.append(p)
            continue
        why = verify_part(out_dir, p, identity, emb_dir, dim)
        if why is not None:
            log.warning("%s does not verify (%s): redoing it", os.path.join(out_dir, p.file), why)
            if report is not None:
                report.parts_redone += 1
            todo.append(p)
    return todo


def run(specs: Sequence[str], out_dir: str, spec: ScorerSpec, bundle, *,
        sources: SourceOptions = SourceOptions(), opts: RayOptions = RayOptions(),
        resume: bool = False, overwrite: bool = False, on_rows=None,
        show_progress: bool = False, emb_dir: Optional[str] = None) -> RunReport:
    """Score ``specs`` into ``out_dir`` (one Parquet part per shard) on Ray; with
    ``emb_dir``, also each part's embeddings (``<part>.npy`` + ``<part>.paths.txt``)."""
    ray = require_ray()
    import pyarrow as pa

    from .integrity import check_output_dir

    t0 = time.perf_counter()
    report = RunReport()
    identity = run_identity(bundle, spec, sources)
    parts = plan_parts(specs, sources, opts.files_per_part)
    if not parts:
        raise RayRunError("no inputs found in " + " ".join(specs))
    dim = int(bundle.manifest.encoder.embed_dim)
    inputs = [f for p in parts for f in ([p.shard] if p.kind != "files" else p.paths)]
    for d, flag in ((out_dir, "--out"), (emb_dir, "--save-embeddings")):
        if d is not None:  # every input is known now, before anything is written
            check_output_dir(d, flag, specs, inputs)
    todo = prepare_output(out_dir, parts, identity, resume=resume, overwrite=overwrite,
                          emb_dir=emb_dir, dim=dim, report=report)
    report.parts_skipped = len(parts) - len(todo)
    if not todo:
        report.seconds = time.perf_counter() - t0
        return report
    started = connect(opts.address)
    delay = float(os.environ.get(_PART_DELAY_ENV, "0") or 0)
    want_emb = emb_dir is not None
    try:
        _quiet_data_context(show_progress)
        per_call = parts_per_call(len(todo), _default_workers(ray, opts))
        ds = ray.data.from_items(
            [{"part": p.name, "kind": p.kind, "shard": p.shard, "paths": p.paths} for p in todo],
            override_num_blocks=math.ceil(len(todo) / per_call))
        ds = ds.map_batches(_PartRunner, batch_size=per_call, batch_format="pyarrow",
                            fn_constructor_kwargs={"spec": spec, "sources": sources,
                                                   "decode_threads": opts.decode_threads,
                                                   "embeddings": want_emb},
                            **_actor_args(opts, spec, ray))
        by_name = {p.name: p for p in todo}
        pending: Dict[str, Dict[int, dict]] = {}
        counts: Dict[str, int] = {}
        written: set = set()  # a retried call (its actor died) resends parts already written
        for batch in _unwrapped(ds.iter_batches(batch_size=None, batch_format="pyarrow")):
            emb = None
            if want_emb:  # non-null exactly for the ok rows; flatten() skips the nulls
                col = batch.column("embedding").combine_chunks()
                emb = iter(col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim))
                batch = batch.drop_columns(["embedding"])
            for r in batch.to_pylist():
                if emb is not None and r["status"] == STATUS_OK:
                    r["embedding"] = next(emb)  # taken in row order, also for skipped rows
                name = r["part"]
                if name in written:
                    continue
                rows = pending.setdefault(name, {})
                if r["n"] >= 0:
                    counts[name] = r["n"]
                else:
                    rows[r["idx"]] = r
                if name in counts and len(rows) == counts[name]:
                    _write_part(pa, out_dir, by_name[name], rows, spec.anchors, identity,
                                emb_dir, dim)
                    report.parts_written += 1
                    report.by_status.update(x["status"] for x in rows.values())
                    if on_rows is not None:
                        on_rows([rows[i] for i in sorted(rows)])
                    del pending[name], counts[name]
                    written.add(name)
                    if delay:
                        time.sleep(delay)
        unfinished = sorted(set(by_name) - set(_finished(out_dir, todo)))
        if unfinished:
            raise RayRunError(f"parts {unfinished[:5]} did not receive all their rows; rerun with "
                              "--resume to redo them")
    finally:
        if started:
            ray.shutdown()
        report.seconds = time.perf_counter() - t0
    return report


_REMOTE_ERROR = re.compile(r"^quasar\.errors\.([A-Za-z]+Error): (.+)$", re.M)


def _unwrapped(it):
    """Iterate, re-raising a QuasarError raised inside a Ray task as itself. Ray wraps it in
    RayTaskError / UserCodeException with the remote traceback; an error raised in an
    actor's constructor reaches the driver only as text (ActorDiedError: "... raised in its
    creation task" + the traceback), whose last ``quasar.errors.X: message`` line is used."""
    try:
        yield from it
    except Exception as exc:
        import quasar.errors as qerrors

        seen, e = set(), exc
        while e is not None and id(e) not in seen:
            seen.add(id(e))
            if isinstance(e, QuasarError) and type(e).__module__.startswith("quasar"):
                raise type(e)(*e.args) from None
            if "creation task" in str(e):
                found = _REMOTE_ERROR.findall(str(e))
                cls = getattr(qerrors, found[-1][0], None) if found else None
                if isinstance(cls, type) and issubclass(cls, QuasarError):
                    raise cls(found[-1][1]) from None
            e = getattr(e, "cause", None) or e.__cause__ or e.__context__
        raise


def _finished(out_dir: str, parts: List[Part]) -> List[str]:
    return [p.name for p in parts if os.path.exists(os.path.join(out_dir, p.file))]


def read_parts(out_dir: str) -> List[dict]:
    """Every row of a Ray run's output directory (parts in name order). For tools and tests."""
    import pyarrow.parquet as pq

    rows: List[dict] = []
    for n in sorted(os.listdir(out_dir)):
        if n.endswith(PART_SUFFIX) and not n.startswith("."):
            rows.extend(pq.read_table(os.path.join(out_dir, n)).to_pylist())
    return rows


# --------------------------------------------------------------------------- Python API
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


def score_dataset(ds, bundle: Optional[str] = None, *, column: Optional[str] = None,
                  id_column: Optional[str] = None, model: Optional[str] = None,
                  anchors="text", resolution: Optional[str] = None, device: str = "auto",
                  batch_size: int = 16, threads: Optional[int] = None,
                  max_pixels: Optional[int] = None, workers: Optional[int] = None,
                  gpus_per_worker: float = 0.0, decode_cpus: float = 1.0,
                  precision: str = "fp32", backend: Optional[str] = None,
                  fast_decode: bool = False, embeddings: bool = False):
    """Add QUASAR scores to a Ray Dataset of images (lazy, like any Ray Data transform).

    Args:
        ds: a ``ray.data.Dataset`` with a column of encoded image bytes (e.g. from
            ``ray.data.read_binary_files(..., include_paths=True)`` or a Parquet/WebDataset
            read), of Hugging Face ``{"bytes", "path"}`` structs, or of image paths readable
            by the workers.
        bundle: bundle directory (None: the cached bundle of ``model``).
        column: the image column; default the first of ``bytes``, ``image``, ``jpg``,
            ``png``, ``webp``, ``path`` present.
        id_column: a column naming each row in error messages (default ``path`` when the
            images are bytes and a ``path`` column exists).
        anchors, resolution, device, batch_size, threads, max_pixels, precision, backend,
            fast_decode: as ``Scorer`` (a reduced precision must have passed its
            ``quasar optimize`` gate; ``auto`` is resolved with the driver's hardware).
        embeddings: also add an ``embedding`` column (fixed-size list of float32, null
            where the input failed).
        workers: actors (default: GPUs / gpus_per_worker, or one per node).
        gpus_per_worker: GPUs per actor (> 0 runs ONNX Runtime on CUDA).
        decode_cpus: CPUs reserved per actor for its decoding threads.

    Returns:
        The dataset with ``score_<anchor set>`` (float, null where the input failed),
        ``status`` (``ok`` or the failure kind, as ``quasar score`` writes it) and ``error``
        columns (and ``embedding``) added; the other columns are kept.

    Example:
        >>> ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)
        >>> scored = score_dataset(ds, "bundles/clip-rn50-nopos.openai")
        >>> scored.drop_columns(["bytes"]).write_parquet("s3://bucket/scores/")
    """
    ray = require_ray()
    device = "cuda" if gpus_per_worker and device == "auto" else device
    spec, _b = resolve_spec(bundle, model=model, anchors=anchors, resolution=resolution,
                            device=device, threads=threads, max_pixels=max_pixels,
                            batch_size=batch_size, precision=precision, backend=backend,
                            fast_decode=fast_decode)
    names = ds.schema().names
    if column is None:
        column = next((c for c in ("bytes", "image", "jpg", "png", "webp", "path") if c in names), None)
        if column is None:
            raise ValueError(f"score_dataset: no image column among {names}; pass column=...")
    elif column not in names:
        raise ValueError(f"score_dataset: no column {column!r} in the dataset (columns: {names})")
    if id_column is None and column != "path" and "path" in names:
        id_column = "path"
    if id_column is not None and id_column not in names:
        raise ValueError(f"score_dataset: no column {id_column!r} in the dataset (columns: {names})")
    opts = RayOptions(workers=workers, gpus_per_worker=gpus_per_worker, decode_cpus=decode_cpus)
    return ds.map_batches(_DatasetScorer, batch_format="pyarrow", batch_size=8 * batch_size,
                          fn_constructor_kwargs={"spec": spec, "column": column,
                                                 "id_column": id_column,
                                                 "decode_threads": opts.decode_threads,
                                                 "embeddings": bool(embeddings)},
                          **_actor_args(opts, spec, ray))


# --------------------------------------------------------------------------- quasar score
def _lock_dirs(out: str, emb_dir: Optional[str]) -> list:
    """The output directory (and a separate embeddings directory) locked for the whole run
    (``<dir>.lock`` beside it, the lock a local run on the same name takes too): a second
    writer, local or Ray, is refused with the holder's process id."""
    from quasar.bundle.lock import OutputLock

    locks: list = []
    try:
        for d in dict.fromkeys(os.path.normpath(x) for x in (out, emb_dir) if x is not None):
            locks.append(OutputLock(d).acquire())
    except BaseException:
        for lk in locks:
            lk.release()
        raise
    return locks


def run_ray(specs: Sequence[str], *, bundle, model, anchors, resolution, device, batch_size,
            workers, out, resume, overwrite, quiet, save_embeddings, max_pixels, threads,
            sources: SourceOptions, address, gpus_per_worker, decode_cpus, files_per_part,
            precision="fp32", backend=None, fast_decode=False,
            usage_error=ValueError) -> int:
    """``quasar score --engine ray``: returns the exit code (0 all ok, 3 some failed)."""
    if out is None:
        raise usage_error("--engine ray writes a directory of Parquet parts: give --out DIR")
    out = str(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise usage_error(f"--out {out} is a file; --engine ray writes a directory of Parquet "
                          "parts: give a directory")
    emb_dir = None
    if save_embeddings is not None:
        emb_dir = str(save_embeddings)
        if os.path.splitext(emb_dir)[1].lower() in (".npy", ".safetensors") or \
                (os.path.exists(emb_dir) and not os.path.isdir(emb_dir)):
            raise usage_error(f"--save-embeddings {emb_dir}: with --engine ray this is a "
                              "directory (one <part>.npy + <part>.paths.txt per part; it may be "
                              "the --out directory)")
    from .integrity import check_output_dir

    for d, flag in ((out, "--out"), (emb_dir, "--save-embeddings")):
        if d is not None:  # the folders now; every input file once the parts are planned
            check_output_dir(d, flag, specs, ())
    try:
        gpus = float(gpus_per_worker or 0)
        opts = RayOptions(address=None if address is None else str(address), workers=workers,
                          gpus_per_worker=gpus, decode_cpus=float(decode_cpus),
                          files_per_part=int(files_per_part))
    except (TypeError, ValueError) as exc:
        raise usage_error(str(exc)) from None
    if device == "cuda" and gpus == 0:
        raise usage_error("--device cuda with --engine ray needs --gpus-per-worker (e.g. 1)")
    if gpus > 0 and device == "auto":
        device = "cuda"
    require_ray()
    spec, b = resolve_spec(None if bundle is None else str(bundle), model=model, anchors=anchors,
                           resolution=resolution, device=device, threads=threads,
                           max_pixels=max_pixels, batch_size=batch_size,
                           precision=str(precision).lower(), backend=backend,
                           fast_decode=bool(fast_decode))
    if not quiet and (spec.precision != "fp32" or spec.backend != "onnxruntime" or fast_decode):
        print(f"quasar score: precision {spec.precision} ({spec.variant or 'fp32 encoder'}, "
              f"{spec.backend}{', fast decode' if fast_decode else ''}) on every actor",
              file=sys.stderr)
    shown = [0]

    def on_rows(rows):
        for r in rows:
            if r["status"] != STATUS_OK and shown[0] < 10 and not quiet:
                shown[0] += 1
                print(f"{r['status']}: {r['error']}", file=sys.stderr)

    show = not quiet and sys.stderr.isatty()
    locks = _lock_dirs(out, emb_dir)
    try:
        rep = run(specs, out, spec, b, sources=sources, opts=opts, resume=resume,
                  overwrite=overwrite, on_rows=on_rows, show_progress=show, emb_dir=emb_dir)
    except KeyboardInterrupt:
        print(f"quasar score: error: interrupted; finished parts are in {out}: run the same "
              "command with --resume to continue", file=sys.stderr)
        raise
    finally:
        for lk in reversed(locks):
            lk.release()
    if not quiet:
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(rep.by_status.items()) if k != STATUS_OK)
        rate = rep.total / rep.seconds if rep.seconds > 0 else 0.0
        print(f"quasar score: {rep.total - rep.failed} scored, {rep.failed} failed"
              + (f" ({failed})" if failed else "")
              + f"; {rep.parts_written} parts written"
              + (f" ({rep.parts_redone} redone: they did not verify)" if rep.parts_redone else "")
              + f", {rep.parts_skipped} already done"
              + f"; {rep.total} images in {rep.seconds:.1f} s ({rate:.1f} images/s) -> {out}",
              file=sys.stderr)
    return 3 if rep.failed else 0
