"""The cluster side of ``quasar score --engine ray``: connecting to (or starting) Ray, sizing
the actor pool, and the driver loop that gathers each part's rows and writes the part
once it is complete (:func:`run`); :func:`run_ray` is the command's Ray engine."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from quasar.errors import QuasarError, RayRunError, UsageError, optional_import

from ..job import ScoreJob, ScorerSpec
from ..pipeline import RunStats
from ..sources import STATUS_OK, SourceOptions
from .actors import _PartRunner, run_identity, spec_of
from .parts import Part, _finished, plan_parts, prepare_output, write_part

log = logging.getLogger(__name__)

# Test seam: seconds the driver waits after writing each part (lets a test kill it between
# parts); unset in normal use.
_PART_DELAY_ENV = "QUASAR_RAY_PART_DELAY"
#: Ray's C++ notice printed on every successful run (Ray Data always puts the actors'
#: constructor arguments in the object store, ray#53727): kept off the console unless
#: --verbose (:func:`_quiet_stderr`)
_RAY_NOISE = re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor "
                        rb"arguments in the object store")


def require_ray():
    optional_import("ray.data", "ray", "the Ray engine (Ray Data)")
    return optional_import("ray", "ray", "the Ray engine (Ray Data)")


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


@dataclass
class RunReport(RunStats):
    """Counts of a Ray run: the local run's (:class:`~quasar.runtime.pipeline.RunStats`)
    plus its parts."""

    parts_written: int = 0
    parts_skipped: int = 0
    parts_redone: int = 0   # finished parts that did not verify on --resume


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


def run(specs: Sequence[str], out_dir: str, spec: ScorerSpec, bundle, *,
        sources: SourceOptions = SourceOptions(), opts: RayOptions = RayOptions(),
        resume: bool = False, overwrite: bool = False, on_rows=None,
        show_progress: bool = False, emb_dir: Optional[str] = None,
        verbose: bool = False, remote_locks: Sequence[Any] = ()) -> RunReport:
    """Score ``specs`` into ``out_dir`` (one Parquet part per shard) on Ray; with
    ``emb_dir``, also each part's embeddings (``<part>.npy`` + ``<part>.paths.txt``).
    ``on_rows`` receives the rows of each part once it is written. Either directory may be
    a URL (``s3://b/scores/``): each part is then written in a staging folder and put to
    the store whole (quasar.runtime.remote_out.RayRemoteOutput); ``remote_locks`` are the
    lock objects the caller holds there (checked before each upload)."""
    from ..integrity import check_output_dir
    from ..storage import is_url

    from ..remote_out import normalize_url

    ray = require_ray()
    out_dir, emb_dir = (normalize_url(d) if d is not None and is_url(d) else d
                        for d in (out_dir, emb_dir))
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
    remote = None
    if is_url(out_dir) or (emb_dir is not None and is_url(emb_dir)):
        from ..remote_out import RayRemoteOutput

        remote = RayRemoteOutput(out_dir, emb_dir, remote_locks)
        remote.begin()
    with _quiet_stderr(not verbose):
        _score_todo(ray, todo, spec, sources, opts, out_dir, identity, emb_dir, dim, report,
                    on_rows, show_progress, remote)
    if remote is not None:
        remote.end()
    report.seconds = time.perf_counter() - t0
    return report


def _score_todo(ray, todo, spec, sources, opts, out_dir, identity, emb_dir, dim, report,
                on_rows, show_progress, remote=None) -> None:
    """Score the parts still to do on Ray, writing each as it completes."""
    started = connect(opts.address)
    try:
        _quiet_data_context(show_progress)
        ds = _scored_parts(ray, todo, spec, sources, opts, emb_dir is not None)
        writer = _PartWriter(out_dir, todo, spec.anchors, identity, emb_dir, dim, report,
                             on_rows, remote)
        for batch in _unwrapped(ds.iter_batches(batch_size=None, batch_format="pyarrow")):
            writer.add(batch)
        unfinished = sorted({p.name for p in todo} - set(_finished(out_dir, todo)))
        if unfinished:
            raise RayRunError(f"parts {unfinished[:5]} did not receive all their rows; rerun with "
                              "--resume to redo them")
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _quiet_stderr(enabled: bool):
    """Drop Ray's :data:`_RAY_NOISE` line from this process's stderr (file descriptor 2,
    which Ray's C++ core writes to directly) while the block runs; every other byte passes
    through at once (a partial line that cannot be a Ray log line - they start with ``[`` -
    is not held back, so progress bars stay live)."""
    try:
        saved = os.dup(2) if enabled else None
    except OSError:
        saved = None
    if saved is None:
        yield
        return
    r, w = os.pipe()
    sys.stderr.flush()
    os.dup2(w, 2)
    os.close(w)
    pump = threading.Thread(target=_pump, args=(r, saved), name="quasar-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer here: the pump sees the end
        pump.join(timeout=5)  # a Ray daemon we did not start may still hold the pipe
        os.close(saved)


def _pump(r: int, out: int) -> None:
    buf = b""
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            chunk = f.read(65536)
            if not chunk:
                break
            *lines, buf = (buf + chunk).split(b"\n")
            data = b"".join(ln + b"\n" for ln in lines if not _RAY_NOISE.search(ln))
            if buf and not buf.startswith((b"[", b"\x1b")):
                data, buf = data + buf, b""
            if data:
                os.write(out, data)
    if buf and not _RAY_NOISE.search(buf):
        os.write(out, buf)


def _scored_parts(ray, todo: List[Part], spec: ScorerSpec, sources: SourceOptions,
                  opts: RayOptions, want_emb: bool):
    """The lazy dataset of the parts' rows: part descriptions -> the actor pool."""
    per_call = parts_per_call(len(todo), _default_workers(ray, opts))
    ds = ray.data.from_items(
        [{"part": p.name, "kind": p.kind, "shard": p.shard, "paths": p.paths} for p in todo],
        override_num_blocks=math.ceil(len(todo) / per_call))
    return ds.map_batches(_PartRunner, batch_size=per_call, batch_format="pyarrow",
                          fn_constructor_kwargs={"spec": spec, "sources": sources,
                                                 "decode_threads": opts.decode_threads,
                                                 "embeddings": want_emb},
                          **_actor_args(opts, spec, ray))


class _PartWriter:
    """The driver's side: collects rows per part (deduplicated by position; a part already
    written is never written again when Ray retries a call whose actor died) and writes a
    part once it has all its rows."""

    def __init__(self, out_dir, todo, anchors, identity, emb_dir, dim, report, on_rows,
                 remote=None):
        self.out_dir, self.anchors, self.identity = out_dir, anchors, identity
        self.emb_dir, self.dim, self.report, self.on_rows = emb_dir, dim, report, on_rows
        self.remote = remote  # RayRemoteOutput: parts staged locally, then put whole
        self.by_name = {p.name: p for p in todo}
        self.pending: Dict[str, Dict[int, dict]] = {}
        self.counts: Dict[str, int] = {}
        self.written: set = set()
        self.delay = float(os.environ.get(_PART_DELAY_ENV, "0") or 0)

    def add(self, batch) -> None:
        emb = None
        if self.emb_dir is not None:  # non-null exactly for the ok rows; flatten() skips nulls
            col = batch.column("embedding").combine_chunks()
            emb = iter(col.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim))
            batch = batch.drop_columns(["embedding"])
        for r in batch.to_pylist():
            if emb is not None and r["status"] == STATUS_OK:
                r["embedding"] = next(emb)  # taken in row order, also for skipped rows
            name = r["part"]
            if name in self.written:
                continue
            rows = self.pending.setdefault(name, {})
            if r["n"] >= 0:
                self.counts[name] = r["n"]
            else:
                rows[r["idx"]] = r
            if name in self.counts and len(rows) == self.counts[name]:
                self._write(name, rows)

    def _write(self, name: str, rows: Dict[int, dict]) -> None:
        if self.remote is None:
            write_part(self.out_dir, self.by_name[name], rows, self.anchors, self.identity,
                       self.emb_dir, self.dim)
        else:  # written whole in the staging folder, then one put per file, the part last
            self.remote.write(self.by_name[name], rows, self.anchors, self.identity, self.dim)
        self.report.parts_written += 1
        self.report.by_status.update(x["status"] for x in rows.values())
        if self.on_rows is not None:
            self.on_rows([rows[i] for i in sorted(rows)])
        del self.pending[name], self.counts[name]
        self.written.add(name)
        if self.delay:
            time.sleep(self.delay)


# --------------------------------------------------------------------------- quasar score
def _options(job: ScoreJob):
    """(RayOptions, device) of a job: the output directory and the Ray settings checked."""
    from ..remote_out import check_writable
    from ..storage import is_url

    if job.out is None:
        raise UsageError("--engine ray writes a directory of Parquet parts: give --out DIR")
    check_writable(job.out, "--out")
    check_writable(job.save_embeddings, "--save-embeddings")
    if not is_url(job.out) and os.path.exists(job.out) and not os.path.isdir(job.out):
        raise UsageError(f"--out {job.out} is a file; --engine ray writes a directory of "
                         "Parquet parts: give a directory")
    gpus = float(job.gpus_per_worker or 0)
    opts = RayOptions(address=job.address, workers=job.workers, gpus_per_worker=gpus,
                      decode_cpus=float(job.decode_cpus), files_per_part=job.files_per_part)
    if job.device == "cuda" and gpus == 0:
        raise UsageError("--device cuda with --engine ray needs --gpus-per-worker (e.g. 1)")
    return opts, ("cuda" if gpus > 0 and job.device == "auto" else job.device)


def run_ray(job: ScoreJob, on_failure=None) -> RunReport:
    """``quasar score --engine ray``: the parts written, skipped and redone and the rows by
    status (the command prints the summary). ``on_failure(status, error)`` is called for
    each failed row as its part is written."""
    from ..integrity import check_output_dir

    emb_dir = job.embeddings_dir()
    for d, flag in ((job.out, "--out"), (emb_dir, "--save-embeddings")):
        if d is not None:  # the folders now; every input file once the parts are planned
            check_output_dir(d, flag, job.inputs, ())
    opts, device = _options(job)
    require_ray()
    spec, b = spec_of(job, device)
    if not job.quiet and (spec.precision != "fp32" or spec.backend != "onnxruntime"
                          or job.fast_decode):
        print(f"quasar score: precision {spec.precision} ({spec.variant or 'fp32 encoder'}, "
              f"{spec.backend}{', fast decode' if job.fast_decode else ''}) on every actor",
              file=sys.stderr)

    def on_rows(rows):
        for r in rows:
            if r["status"] != STATUS_OK and on_failure is not None:
                on_failure(r["status"], r["error"])

    locks = _lock_dirs(job.out, emb_dir)
    try:
        return run(list(job.inputs), job.out, spec, b, sources=job.sources, opts=opts,
                   resume=job.resume, overwrite=job.overwrite, on_rows=on_rows,
                   show_progress=not job.quiet and sys.stderr.isatty(), emb_dir=emb_dir,
                   verbose=job.verbose,
                   remote_locks=[lk for lk in locks if hasattr(lk, "check")])
    except KeyboardInterrupt:
        print(f"quasar score: error: interrupted; finished parts are in {job.out}: run the "
              "same command with --resume to continue", file=sys.stderr)
        raise
    finally:
        for lk in reversed(locks):
            lk.release()


def _lock_dirs(out: str, emb_dir: Optional[str]) -> list:
    """The output directory (and a separate embeddings directory) locked for the whole run
    (``<dir>.lock`` beside it, the lock a local run on the same name takes too): a second
    writer, local or Ray, is refused with the holder's process id. A directory on object
    storage: the lock object ``<dir>/_quasar.lock`` (quasar.runtime.remote_out.RemoteLock;
    the first call to the store, so missing credentials stop the run here)."""
    from quasar.bundle.lock import OutputLock

    from ..remote_out import DIR_LOCK, RemoteLock, normalize_url
    from ..storage import is_url

    locks: list = []
    try:
        for d in dict.fromkeys(normalize_url(x) if is_url(x) else os.path.normpath(x)
                               for x in (out, emb_dir) if x is not None):
            locks.append(RemoteLock(d + "/" + DIR_LOCK, d).acquire() if is_url(d)
                         else OutputLock(d).acquire())
    except BaseException:
        for lk in locks:
            lk.release()
        raise
    return locks
