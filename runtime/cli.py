"""The body of ``quasar score``: score files, folders, globs, lists or stdin into CSV / JSONL /
Parquet. Its options are declared in quasar/commands/score.py (parsed there, strictly,
before anything here runs); :func:`score` turns them into one request,
:class:`~quasar.runtime.job.ScoreJob`, which both engines read.

Dataset files are inputs too: WebDataset ``.tar`` shards (also brace patterns,
``shard-{00000..00099}.tar``) and Parquet files with an image column; their rows are named
``<shard>#<key>`` / ``<file>#<id>``. ``--engine ray`` runs the same engine on a Ray cluster
and writes a directory of Parquet parts (:mod:`quasar.runtime.ray`); both engines end with
the same summary (:meth:`quasar.runtime.pipeline.RunStats.summary`).

Exit codes: quasar/errors.py (``EXIT_CODES``). Errors raised here reach the command layer
(quasar/commands/base.py ``run_command``), which prints them and maps them to exit codes.

Integrity (docs/score.md, "Nothing lost" and "Reliability"): an exclusive lock on each
output file, the run identity next to every output, outputs checked against inputs
(quasar.runtime.integrity).
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
from typing import List, Optional, Tuple

from quasar.console import silence_stdout  # noqa: F401 - re-exported (older callers)
from quasar.errors import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK,  # noqa: F401
                           EXIT_SOME_FAILED, EXIT_USAGE, QuasarError, UsageError)

from .job import ScoreJob

MAX_FAILURES_SHOWN = 10

log = logging.getLogger("quasar.score")


def score(*inputs, bundle: Optional[str] = None, model: Optional[str] = None,
          anchors="text", resolution=None, device: str = "auto", batch_size: int = 16,
          workers: Optional[int] = None, out: Optional[str] = None, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, save_embeddings: Optional[str] = None,
          max_pixels: Optional[int] = None, threads: Optional[int] = None,
          group_factor: int = 8, precision: str = "fp32", backend: Optional[str] = None,
          fast_decode: bool = False, input_type: str = "auto", image_key: str = "jpg;png;webp",
          image_column: Optional[str] = None, id_column: Optional[str] = None,
          engine: str = "local", address: Optional[str] = None, gpus_per_worker: float = 0.0,
          decode_cpus: float = 1.0, files_per_part: int = 1000,
          force_resume: bool = False, offline: bool = False, verbose: bool = False) -> int:
    """Score images: files, directories (recursive), globs, @list.txt or - (paths on stdin).

    Writes one row per input (path, score_<anchor set>..., status, error) to ``out``
    (.csv/.jsonl/.parquet) or as CSV to stdout; a summary goes to stderr. Every parameter
    is the option of the same name of ``quasar score`` (``quasar score --help``,
    docs/score.md); a Python caller's values are checked against the same declarations.
    Returns the exit code: 0 all scored; 3 some failed; 130 interrupted; raises
    :class:`~quasar.errors.QuasarError` (a usage error, a bad bundle...) otherwise.
    """
    kw = dict(locals())
    kw.pop("inputs")
    kw = _checked_call(kw)
    kw["anchors"] = kw["anchors"] or "text"
    if kw.pop("offline"):  # read by quasar.bundle.remote wherever the bundle is resolved
        os.environ["QUASAR_OFFLINE"] = "1"
    from .sources import SourceOptions

    sources = SourceOptions(input_type=kw.pop("input_type"), image_keys=kw.pop("image_key"),
                            image_column=kw.pop("image_column"), id_column=kw.pop("id_column"))
    job = ScoreJob(inputs=tuple(os.fspath(v) if isinstance(v, os.PathLike) else str(v)
                                for v in inputs),
                   sources=sources, offline=offline, **kw)
    try:
        return run_job(job)
    except OSError as exc:
        if isinstance(exc, (QuasarError, BrokenPipeError)):
            raise
        _err(str(exc))  # e.g. the output folder cannot be created
        return EXIT_ERROR


def _checked_call(kw: dict) -> dict:
    """A Python caller's values, converted and checked like the command line's: against the
    option declarations of ``quasar score`` (their types, choices and ranges), the one
    place these facts are written. Values the command layer parsed pass unchanged."""
    import argparse

    from quasar.commands.base import integer, number
    from quasar.commands.score import COMMAND

    for o in COMMAND.options:
        v = kw.get(o.name)
        if v is None or o.name not in kw or isinstance(v, bool):
            continue
        if isinstance(v, (list, tuple)) and o.name == "anchors":
            v = ",".join(str(x) for x in v)
        try:
            if o.type in (integer, number) and isinstance(v, (int, float)):
                v = o.type(repr(v))  # 1.5 for an integer option is refused, as on the CLI
            elif o.type is not None and isinstance(v, str):
                v = o.type(v)
            elif o.choices or o.type is None:
                v = str(v)
            if o.choices and v not in o.choices:
                raise argparse.ArgumentTypeError(f"must be one of {', '.join(o.choices)}, "
                                                 f"got {v!r}")
            if o.type in (integer, number):
                o.check_range(v)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise UsageError(f"{o.flag}: {exc}") from None
        kw[o.name] = v
    return kw


def load_scorer(**kw):
    """The Scorer of a run (a seam for tests that substitute a fake)."""
    from .scorer import Scorer

    return Scorer.from_bundle(kw.pop("bundle"), **kw)


def _err(msg: str) -> None:
    from quasar.text import safe_text

    print(f"quasar score: error: {safe_text(msg)}", file=sys.stderr)


def run_job(job: ScoreJob) -> int:
    """Run a job on its engine; both end with the same summary and exit code."""
    from .inputs import check_specs

    logging.basicConfig(level=logging.ERROR if job.quiet else logging.WARNING,
                        format="quasar score: %(levelname)s: %(message)s", stream=sys.stderr)
    check_specs(list(job.inputs))
    show = _failure_printer(job.quiet)
    if job.engine == "ray":
        from .ray import run_ray

        stats = run_ray(job, on_failure=show)
        where = (f"; {stats.parts_written} parts written"
                 + (f" ({stats.parts_redone} redone: they did not verify)"
                    if stats.parts_redone else "")
                 + f", {stats.parts_skipped} already done")
    else:
        stats, where = _run_local(job, show)
        if stats is None:
            return EXIT_INTERRUPTED
    if not job.quiet:
        print(stats.summary(job.out, where), file=sys.stderr)
    return EXIT_SOME_FAILED if stats.failed else EXIT_OK


def _failure_printer(quiet: bool):
    """``show(status, error, bar)``: the first MAX_FAILURES_SHOWN failures on stderr (one
    line each, above a progress bar)."""
    from quasar.text import safe_text

    shown = [0]

    def show(status: str, error: str, bar=None) -> None:
        if quiet or shown[0] >= MAX_FAILURES_SHOWN:
            return
        shown[0] += 1
        msg = f"{status}: {safe_text(' '.join(error.split()))}"
        (bar.write(msg, file=sys.stderr) if bar is not None else print(msg, file=sys.stderr))

    return show


# --------------------------------------------------------------------------- local engine
def _make_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=None, unit="img", desc="scoring", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


def _count_in_background(specs, done, bar, sources=None) -> None:
    """Count the inputs (a second walk) so that the bar can show an ETA (not for dataset
    files: counting their samples would read them twice)."""
    from .inputs import iter_inputs

    def count():
        try:
            n = 0
            for p in iter_inputs(specs):
                if sources is not None and sources.kind(p) != "image":
                    return
                n += p not in done
            bar.total = n
            bar.refresh()
        except Exception:  # noqa: BLE001 - only the ETA is lost
            pass

    threading.Thread(target=count, name="quasar-count", daemon=True).start()


def _output_files(table, emb_writer) -> list:
    """Every file this run may write (checked against its inputs before anything is)."""
    from .integrity import LOCK_SUFFIX, run_sidecar
    from .writers import staged_name

    files = []
    if table.path is not None:
        files += [table.path, table.journal, table.path + LOCK_SUFFIX, run_sidecar(table.path),
                  staged_name(table.path), staged_name(table.path) + ".partial.jsonl"]
    if emb_writer is not None:
        files += [emb_writer.path, emb_writer.raw, emb_writer.paths_file,
                  emb_writer.path + LOCK_SUFFIX, run_sidecar(emb_writer.path),
                  staged_name(emb_writer.path) + ".partial", staged_name(emb_writer.paths_file)]
    return list(dict.fromkeys(files))


def _stored_identity(table):
    """The run identity an existing table records (sidecar; Parquet: file metadata)."""
    from .integrity import read_run_sidecar

    ident = read_run_sidecar(table.path)
    if ident is None and table.format == "parquet" and os.path.exists(table.path) \
            and not os.path.exists(table.journal):
        ident = table.parquet_identity()
    return ident


def _drop_staged(writers) -> None:
    """After a staged (--overwrite) run that did not complete: its files go, the existing
    outputs stay as they were."""
    for w in writers:
        try:
            w.drop_stage()
        except OSError as exc:
            log.debug("removing the staged files of %s: %s", w.path, exc)


def _close_quietly(*writers) -> None:
    """Close after a failure; a second failure (the disk is still full) must not hide the
    first."""
    for w in writers:
        if w is None:
            continue
        try:
            w.close(complete=False)
        except OSError as exc:
            log.debug("closing %s after a failure: %s", getattr(w, "path", w), exc)


def _guard(job: ScoreJob):
    """The outputs of the run checked against its named inputs, before anything is loaded,
    written or deleted; the guard then checks every input the stream reaches."""
    from .integrity import OutputGuard
    from .remote_out import check_writable
    from .writers import EmbeddingsWriter, ScoreTable, output_format, require_pyarrow

    check_writable(job.out, "--out")
    check_writable(job.save_embeddings, "--save-embeddings")
    if job.out is not None:
        if output_format(job.out) == "parquet":
            require_pyarrow()
    elif job.resume:
        raise UsageError("--resume needs --out (the file to continue)")
    emb = job.save_embeddings
    if emb is not None and os.path.splitext(emb)[1].lower() not in (".npy", ".safetensors"):
        raise UsageError(f"--save-embeddings {emb}: use a .npy or .safetensors file")
    files = _output_files(ScoreTable(job.out, []),
                          EmbeddingsWriter(emb, 1) if emb is not None else None)
    # --overwrite replaces the outputs that exist only at the end: one met as an input before
    # then stops the run (OutputGuard.met), while it is still intact
    guard = OutputGuard(files, [f for f in files if os.path.lexists(f)] if job.overwrite
                        else ())
    guard.check_inputs(list(job.inputs))
    return guard


def _writers(job: ScoreJob, scorer, identity):
    """The score table and the embeddings writer (None without --save-embeddings)."""
    from .writers import EmbeddingsWriter, ScoreTable

    table = ScoreTable(job.out, scorer.anchor_names)
    table.metadata = identity
    if job.save_embeddings is None:
        return table, None
    meta = {"model": getattr(scorer.manifest, "model", ""),
            "anchors": ",".join(scorer.anchor_names), "resolution": str(scorer.resolution)}
    meta.update({f"quasar.{k}": (",".join(v) if isinstance(v, list) else str(v))
                 for k, v in identity.items()})
    return table, EmbeddingsWriter(job.save_embeddings, scorer.embed_dim, meta)


def _run_local(job: ScoreJob, show) -> Tuple[Optional[object], str]:
    """The local engine: (RunStats, the summary's middle part); (None, "") when
    interrupted (the message is printed). Outputs on object storage are written in a
    staging folder and uploaded (quasar.runtime.remote_out)."""
    guard = _guard(job)
    remote = _remote_outputs(job)
    if remote is None:
        return _run_local_files(job, job, show, guard)
    remote.begin()  # the store's locks first: no credentials / no access stop here
    try:
        if remote.existing and not job.resume and not job.overwrite:
            raise UsageError(f"{', '.join(_safe(u) for u in remote.existing)} already exists: "
                             "add --resume to continue it, --overwrite to replace it, or "
                             "choose another file")
        if job.overwrite:  # replaced at the end only: met as an input before, it stops the run
            guard.replaced |= set(remote.existing)
        import dataclasses

        local = dataclasses.replace(job, out=remote.local_path(job.out),
                                    save_embeddings=remote.local_path(job.save_embeddings),
                                    overwrite=False)
        stats, where = _run_local_files(job, local, show, guard, remote)
        if stats is None:
            remote.interrupted()
        return stats, where
    except BaseException:
        remote.interrupted()
        raise
    finally:
        remote.end()


def _remote_outputs(job: ScoreJob):
    """The outputs of ``job`` on object storage (quasar.runtime.remote_out.RemoteOutputs), or
    None when every output is local. Each is tracked with the files a local run leaves
    beside it (identity sidecar, journals, paths file), sidecars first, the output last."""
    from .integrity import run_sidecar
    from .storage import is_url
    from .writers import paths_sidecar

    targets = {}
    if job.out is not None and is_url(job.out):
        targets[job.out] = [run_sidecar(job.out), job.out + ".partial.jsonl", job.out]
    emb = job.save_embeddings
    if emb is not None and is_url(emb):
        targets[emb] = [run_sidecar(emb), emb + ".partial", paths_sidecar(emb), emb]
    if not targets:
        return None
    from .remote_out import RemoteOutputs

    return RemoteOutputs({u: [n.rsplit("/", 1)[1] for n in names]
                          for u, names in targets.items()},
                         resume=job.resume, overwrite=job.overwrite)


def _run_local_files(job: ScoreJob, local: ScoreJob, show, guard, remote=None):
    """The local engine on local files: ``local`` is ``job`` with its remote outputs
    replaced by their staging paths (the same job when every output is local)."""
    from .integrity import OutputLock, run_identity
    from .pipeline import default_workers

    scorer = load_scorer(**job.scorer_kwargs())
    info = getattr(scorer, "run_info", None)
    if info and job.variant_asked and not job.quiet:
        print(f"quasar score: precision {info['precision']} ({info['variant'] or 'fp32 encoder'}"
              f", {info['backend']}, {info['device']}"
              f"{', fast decode' if info['fast_decode'] else ''}): "
              f"{info['precision_reason']}", file=sys.stderr)
    identity = run_identity(scorer)
    table, emb_writer = _writers(local, scorer, identity)
    run = _LocalRun(local, scorer, identity, table, emb_writer, guard,
                    job.workers or default_workers(), show)
    if remote is not None:
        run.after_write = remote.maybe_checkpoint
        run.shown = {local.out: job.out, local.save_embeddings: job.save_embeddings}
    locks: List[OutputLock] = []
    try:
        for target in [t for t in (local.out, local.save_embeddings) if t is not None]:
            locks.append(OutputLock(target).acquire())
        stats = run.run()
    finally:
        for lk in reversed(locks):
            lk.release()
    if stats is not None and remote is not None:
        remote.finish()  # uploaded whole; journals removed from the store
    where = (f", {run.skipped} skipped (already ok in {_safe(job.out)})" if job.resume else "")
    return stats, where


def _safe(text) -> str:
    from quasar.text import safe_text

    return safe_text(text)


class _LocalRun:
    """One locked local run: prepare the outputs (resume / overwrite), stream the inputs
    through the engine into the writers, finish the outputs."""

    def __init__(self, job, scorer, identity, table, emb_writer, guard, workers, show):
        self.job, self.scorer, self.identity = job, scorer, identity
        self.table, self.emb, self.guard = table, emb_writer, guard
        self.workers, self.show = workers, show
        self.done: set = set()
        self.staged: list = []
        self.seen = self.skipped = 0
        self.after_write = None  # called after each batch of rows (remote checkpoints)
        self.shown: dict = {}    # staging path -> the URL it is uploaded to (messages)

    def run(self):
        from .pipeline import PipelineConfig

        self.prepare()
        cfg = PipelineConfig(batch_size=self.job.batch_size, workers=self.workers,
                             variable_shapes=not self.scorer.fixed_size,
                             group_factor=self.job.group_factor)
        bar = _make_bar(not self.job.quiet and sys.stderr.isatty())
        if bar is not None and "-" not in self.job.inputs:
            _count_in_background(list(self.job.inputs), self.done, bar, self.job.sources)
        src = self.source()
        try:
            first = next(src, None)
        except BaseException:
            _drop_staged(self.staged)
            raise
        if first is None and self.seen == 0:
            _drop_staged(self.staged)
            if bar is not None:
                bar.close()
            raise UsageError("no images found in " + " ".join(_safe(s) for s in self.job.inputs)
                             + " (image extensions: jpg, png, webp, bmp, tiff, gif, ...; "
                               "dataset files: .tar, .parquet)")
        stats = self.stream(itertools.chain([] if first is None else [first], src), cfg, bar)
        if stats is not None:
            self.finish()
        return stats

    def prepare(self) -> None:
        """Refuse, check, stage or compact what a previous run left; the identity is on
        disk before the first row (except for staged outputs: written when replaced)."""
        from .integrity import check_resume_identity, read_run_sidecar, write_run_sidecar

        job, table, emb = self.job, self.table, self.emb
        existing = [w for w in (table, emb) if w is not None and w.exists()]
        if existing and not job.resume and not job.overwrite:
            names = ", ".join(_safe(w.path) for w in existing)
            raise UsageError(f"{names} already exists: add --resume to continue it, "
                             "--overwrite to replace it, or choose another file")
        if job.resume:  # check every identity before anything is rewritten
            for w in existing:
                old = _stored_identity(w) if w is table else read_run_sidecar(w.path)
                check_resume_identity(self.shown.get(w.path, w.path), old, self.identity,
                                      job.force_resume)
        self.staged = [w for w in existing if job.overwrite]
        for w in self.staged:  # replaced when the run completes, not now (OutputGuard)
            w.stage()
        if job.resume:
            keep, _ = table.scan_ok()
            if emb is not None:
                jpaths = emb.journal_paths()
                keep = keep & set(jpaths)
                emb.compact(jpaths, keep)
            table.compact(keep)
            self.done = keep
        for w in (table, emb):
            if w is not None and w.path is not None and w not in self.staged:
                write_run_sidecar(w.path, self.identity)

    def source(self):
        """The engine's items: inputs checked against the outputs as they are met (before
        a shard is opened), dataset files expanded, inputs already ok skipped."""
        from quasar.errors import InputIsOutputError

        from .engine import FailedInput
        from .inputs import iter_inputs
        from .pipeline import item_id
        from .sources import iter_items

        def guarded(paths):
            for p in paths:
                own = self.guard.met(p) if isinstance(p, str) else None
                if own is not None:
                    p = FailedInput(p, InputIsOutputError(
                        f"{_safe(p)}: this is an output of this run ({_safe(own)}); "
                        "not read - write the outputs outside the folders you score"))
                yield p

        for p in iter_items(guarded(iter_inputs(list(self.job.inputs))), self.job.sources):
            self.seen += 1
            if item_id(p) in self.done:
                self.skipped += 1
                continue
            yield p

    def sink(self, bar):
        from .writers import STATUS_OK

        def write(rows, emb):
            if self.emb is not None:
                self.emb.write([r.path for r in rows if r.status == STATUS_OK], emb)
            self.table.write(rows)
            for r in rows:
                if r.status != STATUS_OK:
                    self.show(r.status, r.error, bar)
            if self.after_write is not None:
                self.after_write()

        return write

    def stream(self, items, cfg, bar):
        """Run the engine; None when interrupted (rows so far kept, message printed)."""
        from .pipeline import run_pipeline

        table, emb = self.table, self.emb
        table.open()
        try:
            stats = run_pipeline(self.scorer, items, self.sink(bar), cfg, progress=bar)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            _close_quietly(table, emb)
            if self.staged:
                _drop_staged(self.staged)
                _err(f"interrupted: nothing replaced (--overwrite replaces {_safe(self.job.out)} "
                     "only when the run completes); run the same command again")
                return None
            where = table.journal or "stdout"
            if self.shown.get(self.job.out):  # a remote --out: its last upload is what counts
                where = f"{_safe(self.shown[self.job.out])} (uploading them now)"
            _err(f"interrupted: {table.rows_written} rows written to {where}"
                 "; run the same command with --resume to continue")
            return None
        except BaseException:
            if bar is not None:
                bar.close()
            _close_quietly(table, emb)
            _drop_staged(self.staged)
            raise
        if bar is not None:
            bar.close()
        return stats

    def finish(self) -> None:
        """Complete the outputs (a Parquet file from its journal, staged outputs renamed
        over the old ones with the new identity)."""
        from .integrity import run_sidecar, write_run_sidecar

        table, emb = self.table, self.emb
        table.close(complete=True)
        if emb is not None:
            emb.close(complete=True)
        for w in self.staged:  # replaced now: the identity of the new rows
            if w is emb or w.format != "parquet":
                write_run_sidecar(w.path, self.identity)
        if table.format == "parquet" and table.path is not None:
            try:  # the identity is in the Parquet file's metadata now
                os.remove(run_sidecar(table.path))
            except OSError:
                pass
