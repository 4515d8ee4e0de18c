"""Embeddings of a dataset through the runtime (ONNX), cached on disk and resumable.

Cache layout (under :func:`quasar.home.embeddings_cache_dir`)::

    <model>-<encoder sha256[:16]>/<dataset>/<subset>/<resolution>/
        index.json               paths (relative to the dataset root), chunk size, dim, model
        chunk-000000.safetensors embeddings [n, D] of rows [start, stop), written as they finish
        ...

The key is the bundle's encoder checksum (``bundle.json`` ``files``), so re-exported or
different weights never share a cache. ``index.json`` is compared with the current list of
paths: a different list (other subset, new files) discards the cache. Each chunk is written
to a temp file and renamed, so an interrupted run leaves only whole chunks, which the next
run reuses. Each chunk records a digest of its relative paths *and* the stat fingerprint
of each file - (device, inode, size, mtime_ns, ctime_ns): an image replaced under the same
name, or rewritten in place with the same size and its mtime set back (``os.utime``), makes
its chunk stale, and it is embedded again. ``ctime`` is the kernel's: no user call can set it
back, and any write, rename or ``utime`` moves it. (Hashing every image's bytes would cost a
full read of the dataset on every cache hit; the fingerprint costs one ``stat``.) A copied or
moved dataset is therefore embedded again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from quasar.bundle.atomic import atomic_output, atomic_write_text
from quasar.errors import DatasetError
from quasar.home import embeddings_cache_dir

from .datasets.base import DatasetSamples

log = logging.getLogger(__name__)

INDEX = "index.json"
CACHE_VERSION = 3  # 2: chunks keyed by (size, mtime_ns); 3: + device, inode, ctime_ns
DEFAULT_CHUNK = 512


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(s)) or "_"


def encoder_key(manifest) -> str:
    """``<model>-<sha256[:16]>`` of the bundle's encoder (and its external data, if any)."""
    enc = manifest.encoder
    parts = [manifest.files.get(enc.file, "")]
    if enc.external_data:
        parts.append(manifest.files.get(enc.external_data, ""))
    if not parts[0]:
        raise DatasetError(f"bundle of {manifest.model} records no sha256 for {enc.file}; "
                           "cannot key the embeddings cache — re-export the bundle")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest() if len(parts) > 1 else parts[0]
    return f"{_safe(manifest.model)}-{digest[:16]}"


def relative_paths(samples: DatasetSamples) -> List[str]:
    """Paths relative to the dataset root (POSIX), absolute where outside the root."""
    root = Path(samples.root)
    out = []
    for p in samples.paths:
        p = Path(p)
        try:
            out.append(p.relative_to(root).as_posix())
        except ValueError:
            out.append(p.as_posix())
    return out


def cache_dir_for(manifest, samples: DatasetSamples, resolution: str,
                  cache_root: Optional[Path] = None) -> Path:
    root = Path(cache_root) if cache_root is not None else embeddings_cache_dir()
    return (root / encoder_key(manifest) / _safe(samples.name) / _safe(samples.subset)
            / _safe(resolution))


def _chunk_name(i: int) -> str:
    return f"chunk-{i:06d}.safetensors"


def _paths_digest(paths: Sequence[str], files: Optional[Sequence[Path]] = None) -> str:
    """Key of a chunk: its relative paths and, for each file, (device, inode, size,
    mtime_ns, ctime_ns), so that an image replaced or rewritten is embedded again."""
    parts = list(paths)
    if files is not None:
        for i, f in enumerate(files):
            try:
                st = os.stat(f)
                parts[i] += (f"\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
                             f"\0{st.st_ctime_ns}")
            except OSError:
                parts[i] += "\0missing"
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _read_chunk(path: Path, digest: str, n: int, dim: int) -> Optional[np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            if (f.metadata() or {}).get("paths_sha256") != digest:
                return None
            e = f.get_tensor("embeddings")
    except Exception:  # a torn or foreign file: recompute that chunk
        return None
    if e.shape != (n, dim) or not np.all(np.isfinite(e)):
        return None
    return e


def _write_chunk(path: Path, emb: np.ndarray, digest: str) -> None:
    from safetensors.numpy import save_file

    with atomic_output(path) as tmp:
        save_file({"embeddings": np.ascontiguousarray(emb, dtype=np.float32)}, str(tmp),
                  metadata={"paths_sha256": digest})


def _prepare_dir(d: Path, index: dict) -> None:
    """Create the cache folder, or reset it when its index describes other paths."""
    ipath = d / INDEX
    if ipath.is_file():
        try:
            old = json.loads(ipath.read_text())
        except ValueError:
            old = None
        if old == index:
            return
        log.info("embeddings cache %s describes other images; recomputing", d)
        shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ipath, json.dumps(index))


def _progress(total: int, desc: str, enabled: Optional[bool]):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(total=total, desc=desc, unit="img", disable=disable, leave=False)


def _embed_chunk(scorer, paths: Sequence[Path]) -> np.ndarray:
    res = scorer.embed([str(p) for p in paths], errors="collect")
    values = getattr(res, "values", res)
    errors = [e for e in getattr(res, "errors", []) if e is not None]
    if errors:
        bad = [str(p) for p, e in zip(paths, res.errors) if e is not None]
        raise DatasetError(f"{len(bad)} images could not be read, e.g. {bad[0]}: {errors[0]}; "
                           "fix or remove them from the dataset")
    return np.asarray(values, dtype=np.float32)


def dataset_embeddings(scorer, samples: DatasetSamples, *, cache: bool = True,
                       cache_root: Optional[Path] = None, chunk_size: int = DEFAULT_CHUNK,
                       progress: Optional[bool] = None) -> np.ndarray:
    """Raw embeddings [N, D] float32 of every image of ``samples``, in order.

    ``scorer`` is a :class:`quasar.runtime.scorer.Scorer` (its resolution and encoder define
    the cache key). ``progress`` None shows a bar only on a terminal.
    """
    n, dim = len(samples), int(scorer.embed_dim)
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    chunk_size = max(1, int(chunk_size))
    bounds = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    rel = relative_paths(samples)
    d: Optional[Path] = None
    if cache:
        d = cache_dir_for(scorer.manifest, samples, scorer.resolution, cache_root)
        _prepare_dir(d, {"version": CACHE_VERSION, "model": scorer.manifest.model,
                         "dataset": samples.name, "subset": samples.subset,
                         "resolution": scorer.resolution, "dim": dim, "n": n,
                         "chunk_size": chunk_size, "paths": rel})
    out = np.empty((n, dim), dtype=np.float32)
    bar = _progress(n, f"{samples.name}/{samples.subset} @{scorer.resolution}", progress)
    try:
        for i, (s, e) in enumerate(bounds):
            digest = _paths_digest(rel[s:e], samples.paths[s:e])
            emb = _read_chunk(d / _chunk_name(i), digest, e - s, dim) if d is not None else None
            if emb is None:
                emb = _embed_chunk(scorer, samples.paths[s:e])
                if emb.shape != (e - s, dim):
                    raise DatasetError(f"encoder returned {emb.shape} for {e - s} images")
                if d is not None:
                    _write_chunk(d / _chunk_name(i), emb, digest)
            out[s:e] = emb
            bar.update(e - s)
    finally:
        bar.close()
    return out
