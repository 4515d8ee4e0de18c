"""The body of ``quasar score``: score files, folders, globs, lists or stdin into CSV / JSONL /
Parquet. Its options are declared in quasar/commands/score.py (parsed there, strictly,
before anything here runs).

Dataset files are inputs too: WebDataset ``.tar`` shards (also brace patterns,
``shard-{00000..00099}.tar``) and Parquet files with an image column; their rows are named
``<shard>#<key>`` / ``<file>#<id>``. ``--engine ray`` runs the same engine on a Ray cluster
and writes a directory of Parquet parts (runtime/ray.py).

Exit codes (as every command, quasar/commands/base.py): 0 every input scored; 3 some inputs
failed (each has a row with its status); 2 usage error (bad value, no inputs, unknown model,
bad bundle, output that exists without --resume/--overwrite, output locked by another run,
output that is an input, --resume of another run identity); 130 interrupted (rows written
so far are kept: --resume); 1 unexpected error (e.g. the disk is full: the message names the
file, and the output stays resumable).

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
from typing import Optional

from quasar.console import silence_stdout
from quasar.errors import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK,  # noqa: F401
                           EXIT_SOME_FAILED, EXIT_USAGE, UsageError)

MAX_FAILURES_SHOWN = 10

log = logging.getLogger("quasar.score")


def _as_list(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def _positive_int(name: str, value, allow_none: bool = False, minimum: int = 1) -> Optional[int]:
    if value is None and allow_none:
        return None
    try:
        v = int(value)
        if v != value and not (isinstance(value, str) and str(v) == value.strip()):
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(f"--{name} must be a positive integer, got {value!r}") from None
    if v < minimum:
        raise UsageError(f"--{name} must be an integer >= {minimum}, got {value!r}")
    return v


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
          force_resume: bool = False, offline: bool = False) -> int:
    """Score images: files, directories (recursive), globs, @list.txt or - (paths on stdin).

    Writes one row per input (path, score_<anchor set>..., status, error) to --out
    (.csv/.jsonl/.parquet) or as CSV to stdout; a summary goes to stderr.
    Returns the exit code: 0 all scored; 3 some failed; 2 usage error; 130 interrupted.

    Args:
        inputs: image files, directories, globs, @list.txt files, or - for stdin.
        bundle: bundle directory (from `quasar export`).
        model: model id whose bundle is in the cache (default clip-rn50-nopos.openai).
        anchors: anchor set name(s), comma-separated, or "all".
        resolution: 224 | 512 | native (default: the bundle's).
        device: auto | cpu | cuda.
        batch_size: images per inference batch.
        workers: decoding threads (default min(4, CPU count)).
        out: output file (.csv, .jsonl, .parquet); CSV on stdout when absent.
        resume: continue an existing --out: skip inputs with an ok row, retry the others.
            Refused when the output was made by another bundle / model / resolution /
            anchor sets / precision (its run identity, see docs/score.md).
        force_resume: also resume an output that records no run identity (older quasar).
        overwrite: replace an existing --out (and --save-embeddings) instead of refusing.
        quiet: no progress bar, no summary (errors still shown).
        save_embeddings: also write embeddings of the ok rows (.npy or .safetensors) plus
            <stem>.paths.txt.
        max_pixels: refuse images with more pixels (decompression-bomb limit; 0 = no limit).
        threads: ONNX Runtime intra-op threads.
        group_factor: for variable-shape resolutions, batch_size * group_factor inputs are
            grouped by shape at a time.
        precision: fp32 | int8 | bf16 | fp16 | auto (variants from `quasar optimize`).
        backend: onnxruntime | openvino.
        fast_decode: DCT-scaled JPEG decoding (only once gated by quasar optimize).
        input_type: auto (by extension: .tar WebDataset shards, .parquet files, anything else
            an image) | image | webdataset | parquet.
        image_key: WebDataset image member extension(s), first match wins ("jpg;png;webp").
        image_column: Parquet column of encoded image bytes.
        id_column: Parquet column naming each row (default: the row number).
        engine: local | ray (Ray Data; --out is then a directory of Parquet parts).
        address: Ray cluster address (auto, HOST:PORT; default: start a local Ray).
        gpus_per_worker: GPUs per Ray scoring actor (> 0: CUDA); --workers = actors.
        decode_cpus: CPUs reserved per Ray actor for decoding threads.
        files_per_part: loose files per output part (--engine ray).
        offline: a --bundle URL uses its cached copy, no network call (QUASAR_OFFLINE=1).
    """
    if offline:  # read by quasar.bundle.remote wherever the bundle is resolved
        os.environ["QUASAR_OFFLINE"] = "1"
    return _score([os.fspath(v) if isinstance(v, os.PathLike) else str(v) for v in inputs],
                  bundle=bundle, model=model, anchors=anchors, resolution=resolution,
                  device=device, batch_size=batch_size, workers=workers, out=out,
                  resume=resume, overwrite=overwrite, quiet=quiet,
                  save_embeddings=save_embeddings, max_pixels=max_pixels, threads=threads,
                  group_factor=group_factor, precision=precision, backend=backend,
                  fast_decode=fast_decode, input_type=input_type, image_key=image_key,
                  image_column=image_column, id_column=id_column, engine=engine,
                  address=address, gpus_per_worker=gpus_per_worker, decode_cpus=decode_cpus,
                  files_per_part=files_per_part, force_resume=force_resume)


def load_scorer(**kw):
    """The Scorer of a run (a seam for tests that substitute a fake)."""
    from .scorer import Scorer

    return Scorer.from_bundle(kw.pop("bundle"), **kw)


def _err(msg: str) -> None:
    from quasar.text import safe_text

    print(f"quasar score: error: {safe_text(msg)}", file=sys.stderr)


def _score(inputs, **kw) -> int:
    from quasar.errors import QuasarError

    try:
        return _run(inputs, **kw)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `quasar score dir | head`: the reader went away
        silence_stdout()
        return EXIT_ERROR
    except QuasarError as exc:  # unknown model, bad bundle, device, unreadable output/list
        _err(str(exc))
        return int(getattr(exc, "exit_code", EXIT_USAGE))  # 1 for a full disk
    except OSError as exc:
        _err(f"{exc}")
        return EXIT_ERROR


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


def _run(inputs, *, bundle, model, anchors, resolution, device, batch_size, workers, out,
         resume, overwrite, quiet, save_embeddings, max_pixels, threads, group_factor,
         precision="fp32", backend=None, fast_decode=False,
         input_type="auto", image_key="jpg;png;webp", image_column=None, id_column=None,
         engine="local", address=None, gpus_per_worker=0.0, decode_cpus=1.0,
         files_per_part=1000, force_resume=False) -> int:
    from .inputs import check_specs
    from .integrity import OutputGuard, OutputLock, run_identity
    from .pipeline import default_workers
    from .sources import SourceOptions
    from .writers import EmbeddingsWriter, ScoreTable, output_format, require_pyarrow

    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING,
                        format="quasar score: %(levelname)s: %(message)s", stream=sys.stderr)
    specs = [str(s) for s in inputs]
    check_specs(specs)
    batch_size = _positive_int("batch-size", batch_size)
    workers = _positive_int("workers", workers, allow_none=True)
    group_factor = _positive_int("group-factor", group_factor)
    max_pixels = _positive_int("max-pixels", max_pixels, allow_none=True, minimum=0)
    threads = _positive_int("threads", threads, allow_none=True)
    device = str(device).lower()
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {device!r}")
    resolution = None if resolution is None else str(resolution)
    if resolution is not None and resolution not in ("224", "512", "native"):
        raise UsageError(f"--resolution must be 224, 512 or native, got {resolution!r}")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    try:
        sources = SourceOptions(input_type=str(input_type), image_keys=str(image_key),
                                image_column=None if image_column is None else str(image_column),
                                id_column=None if id_column is None else str(id_column))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    engine = str(engine).lower()
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine must be local or ray, got {engine!r}")
    if force_resume and not resume:
        raise UsageError("--force-resume goes with --resume")
    if engine == "ray":
        from .ray import run_ray

        if bundle is not None and model is not None:
            raise UsageError("give --bundle or --model, not both")
        return run_ray(specs, bundle=bundle, model=model, anchors=_as_list(anchors) or "text",
                       resolution=resolution, device=device, batch_size=batch_size,
                       workers=_positive_int("workers", workers, allow_none=True), out=out,
                       resume=resume, overwrite=overwrite, quiet=quiet,
                       save_embeddings=save_embeddings, max_pixels=max_pixels, threads=threads,
                       sources=sources, address=address, gpus_per_worker=gpus_per_worker,
                       decode_cpus=decode_cpus,
                       files_per_part=_positive_int("files-per-part", files_per_part),
                       precision=precision, backend=backend, fast_decode=fast_decode,
                       usage_error=UsageError)
    workers = workers or default_workers()
    if out is not None:
        out = str(out)
        if output_format(out) == "parquet":
            require_pyarrow()
    elif resume:
        raise UsageError("--resume needs --out (the file to continue)")
    if bundle is not None and model is not None:
        raise UsageError("give --bundle or --model, not both")
    if save_embeddings is not None:
        save_embeddings = str(save_embeddings)
        if os.path.splitext(save_embeddings)[1].lower() not in (".npy", ".safetensors"):
            raise UsageError(f"--save-embeddings {save_embeddings}: use a .npy or .safetensors file")

    # outputs that are (or would overwrite) an input: refused before anything is touched
    pre_table = ScoreTable(out, [])
    pre_emb = EmbeddingsWriter(save_embeddings, 1) if save_embeddings is not None else None
    files = _output_files(pre_table, pre_emb)
    # --overwrite replaces the outputs that exist only at the end: one met as an input before
    # then stops the run (OutputGuard.met), while it is still intact
    guard = OutputGuard(files, [f for f in files if os.path.lexists(f)] if overwrite else ())
    guard.check_inputs(specs)

    scorer = load_scorer(bundle=None if bundle is None else str(bundle), model=model, device=device,
                         anchors=_as_list(anchors) or "text", resolution=resolution,
                         batch_size=batch_size, threads=threads, max_pixels=max_pixels,
                         **({"precision": str(precision).lower(), "backend": backend,
                             "fast_decode": bool(fast_decode)} if (precision != "fp32" or backend
                                                      or fast_decode) else {}))
    info = getattr(scorer, "run_info", None)
    if info and (precision != "fp32" or backend or fast_decode):
        if not quiet:
            print(f"quasar score: precision {info['precision']} ({info['variant'] or 'fp32 encoder'}"
                  f", {info['backend']}, {info['device']}"
                  f"{', fast decode' if info['fast_decode'] else ''}): "
                  f"{info['precision_reason']}", file=sys.stderr)
    identity = run_identity(scorer)

    table = ScoreTable(out, scorer.anchor_names)
    table.metadata = identity
    emb_writer = None
    if save_embeddings is not None:
        meta = {"model": getattr(scorer.manifest, "model", ""),
                "anchors": ",".join(scorer.anchor_names), "resolution": str(scorer.resolution)}
        meta.update({f"quasar.{k}": (",".join(v) if isinstance(v, list) else str(v))
                     for k, v in identity.items()})
        emb_writer = EmbeddingsWriter(save_embeddings, scorer.embed_dim, meta)

    locks = []
    try:
        for target in ([out] if out is not None else []) + \
                ([save_embeddings] if save_embeddings is not None else []):
            locks.append(OutputLock(target).acquire())
        return _run_locked(specs, scorer, identity, table, emb_writer, guard, resume,
                           overwrite, quiet, force_resume, batch_size, workers, group_factor, out,
                           sources)
    finally:
        for lk in reversed(locks):
            lk.release()


def _run_locked(specs, scorer, identity, table, emb_writer, guard, resume, overwrite, quiet,
                force_resume, batch_size, workers, group_factor, out, sources) -> int:
    from quasar.errors import InputIsOutputError

    from .engine import FailedInput
    from .inputs import iter_inputs
    from .integrity import (check_resume_identity, read_run_sidecar, run_sidecar,
                            write_run_sidecar)
    from .pipeline import PipelineConfig, run_pipeline
    from .pipeline import item_id
    from .sources import iter_items
    from quasar.text import safe_text

    from .writers import STATUS_OK

    done: set = set()
    existing = [w for w in (table, emb_writer) if w is not None and w.exists()]
    if existing and not resume and not overwrite:
        names = ", ".join(safe_text(w.path) for w in existing)
        raise UsageError(f"{names} already exists: add --resume to continue it, --overwrite to "
                         "replace it, or choose another file")
    if resume:  # check every identity before anything is rewritten
        for w in existing:
            old = _stored_identity(w) if w is table else read_run_sidecar(w.path)
            check_resume_identity(w.path, old, identity, force_resume)
    staged = [w for w in existing if overwrite]
    for w in staged:  # replaced when the run completes, not now (OutputGuard)
        w.stage()
    if resume:
        ok, _ = table.scan_ok()
        keep = ok
        if emb_writer is not None:
            jpaths = emb_writer.journal_paths()
            keep = ok & set(jpaths)
            emb_writer.compact(jpaths, keep)
        table.compact(keep)
        done = keep
    for w in (table, emb_writer):  # the identity is on disk before the first row
        if w is not None and w.path is not None and w not in staged:
            write_run_sidecar(w.path, identity)

    fixed = True
    try:
        fixed = scorer.manifest.preprocess[str(scorer.resolution)].fixed_size is not None
    except Exception:  # noqa: BLE001 - fall back on the resolution name
        fixed = str(scorer.resolution) == "224"
    cfg = PipelineConfig(batch_size=batch_size, workers=workers, variable_shapes=not fixed,
                         group_factor=group_factor)

    counts = {"seen": 0, "skipped": 0}
    failures_shown = [0]

    def guarded(paths):
        """Every input file met (before a shard is opened) against the outputs."""
        for p in paths:
            own = guard.met(p) if isinstance(p, str) else None
            if own is not None:
                p = FailedInput(p, InputIsOutputError(
                    f"{safe_text(p)}: this is an output of this run ({safe_text(own)}); "
                    "not read - write the outputs outside the folders you score"))
            yield p

    def source():
        for p in iter_items(guarded(iter_inputs(specs)), sources):
            counts["seen"] += 1
            if item_id(p) in done:
                counts["skipped"] += 1
                continue
            yield p

    bar = _make_bar(not quiet and sys.stderr.isatty())
    if bar is not None and "-" not in specs:
        _count_in_background(specs, done, bar, sources)

    def sink(rows, emb):
        if emb_writer is not None:
            emb_writer.write([r.path for r in rows if r.status == STATUS_OK], emb)
        table.write(rows)
        for r in rows:
            if r.status != STATUS_OK and failures_shown[0] < MAX_FAILURES_SHOWN and not quiet:
                failures_shown[0] += 1
                msg = f"{r.status}: {safe_text(' '.join(r.error.split()))}"
                (bar.write(msg, file=sys.stderr) if bar is not None else print(msg, file=sys.stderr))

    src = source()
    try:
        first = next(src, None)
    except BaseException:
        _drop_staged(staged)
        raise
    if first is None and counts["seen"] == 0:
        _drop_staged(staged)
        if bar is not None:
            bar.close()
        raise UsageError("no images found in " + " ".join(safe_text(s) for s in specs)
                         + " (image extensions: jpg, png, webp, bmp, tiff, gif, ...; dataset "
                           "files: .tar, .parquet)")
    table.open()
    try:
        stats = run_pipeline(scorer, itertools.chain([] if first is None else [first], src), sink, cfg,
                             progress=bar)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        _close_quietly(table, emb_writer)
        if staged:
            _drop_staged(staged)
            _err(f"interrupted: nothing replaced (--overwrite replaces {safe_text(out)} only "
                 "when the run completes); run the same command again")
            return EXIT_INTERRUPTED
        where = table.journal or "stdout"
        _err(f"interrupted: {table.rows_written} rows written to {where}; run the same command "
             "with --resume to continue")
        return EXIT_INTERRUPTED
    except BaseException:
        if bar is not None:
            bar.close()
        _close_quietly(table, emb_writer)
        _drop_staged(staged)
        raise
    if bar is not None:
        bar.close()
    table.close(complete=True)
    if emb_writer is not None:
        emb_writer.close(complete=True)
    for w in staged:  # replaced now: the identity of the new rows
        if w is emb_writer or w.format != "parquet":
            write_run_sidecar(w.path, identity)
    if table.format == "parquet" and table.path is not None:
        try:  # the identity is in the Parquet file's metadata now
            os.remove(run_sidecar(table.path))
        except OSError:
            pass

    if not quiet:
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(stats.by_status.items()) if k != STATUS_OK)
        dest = f" -> {safe_text(out)}" if out else ""
        print(f"quasar score: {stats.scored} scored, {stats.failed} failed"
              + (f" ({failed})" if failed else "")
              + (f", {counts['skipped']} skipped (already ok in {safe_text(out)})" if resume else "")
              + f"; {stats.total} images in {stats.seconds:.1f} s ({stats.images_per_s:.1f} images/s)"
              + dest, file=sys.stderr)
    return EXIT_SOME_FAILED if stats.failed else EXIT_OK
