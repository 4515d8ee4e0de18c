"""Parts of a Ray run: what they are made from, how each is written, and how a rerun
decides which ones to trust (``--resume``: :func:`verify_part`) and which to redo.

A part is one input shard (WebDataset ``.tar``, ``.parquet``) or a chunk of
``files_per_part`` loose files, and one Parquet file in the output directory, written whole
(temp name + rename) with the run identity, its source, its row count and a checksum of its
cells in its metadata (key ``quasar.run``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from quasar.bundle.atomic import atomic_output
from quasar.errors import RayRunError

from ..integrity import IDENTITY
from ..sources import STATUS_OK, SourceOptions, check_parquet_columns
from ..storage import is_url

log = logging.getLogger(__name__)


class LocalStore:
    """The file operations the parts code needs, on a local folder; an output directory on
    object storage has the same interface (quasar.runtime.remote_out.RemoteStore)."""

    remote = False
    join = staticmethod(os.path.join)
    listdir = staticmethod(os.listdir)
    exists = staticmethod(os.path.exists)
    size = staticmethod(os.path.getsize)
    remove = staticmethod(os.remove)

    @staticmethod
    def open(p: str, mode: str = "rb"):
        return open(p, mode)

    @staticmethod
    def makedirs(d: str) -> None:
        os.makedirs(d, exist_ok=True)


LOCAL = LocalStore()


def store_of(d: Optional[str]):
    """The store of an output directory: :data:`LOCAL`, or object storage for a URL."""

    if d is not None and is_url(d):
        from ..remote_out import RemoteStore

        return RemoteStore()
    return LOCAL


def _read_table(store, path: str, columns=None):
    import pyarrow.parquet as pq

    if not store.remote:
        return pq.read_table(path, columns=columns)
    with store.open(path) as f:
        return pq.read_table(f, columns=columns)


def _read_schema(store, path: str):
    import pyarrow.parquet as pq

    if not store.remote:
        return pq.read_schema(path)
    with store.open(path) as f:
        return pq.read_schema(f)

RUN_META_KEY = b"quasar.run"
PART_SUFFIX = ".parquet"
TMP_SUFFIX = ".tmp"  # quasar.bundle.atomic temp files: .<name>.<pid>-<random>.tmp


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


def plan_parts(specs: Sequence[str], sources: SourceOptions,
               files_per_part: int = 1000) -> List[Part]:
    """Parts of a run, in input order: one per shard, loose files in chunks."""
    from ..inputs import iter_inputs

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
            where = (p.shard if is_url(p.shard) else os.path.abspath(p.shard)
                     ).encode("utf-8", "surrogateescape")
            stem += "-" + hashlib.sha1(where).hexdigest()[:8]
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


def part_problem(path: str, meta: Dict[str, Any], anchors: Sequence[str],
                 store=LOCAL) -> Optional[str]:
    """Why a finished part cannot be trusted, or None: its rows against the count and the
    checksum in its metadata, ids unique, ok rows with finite scores in [0, 1]."""
    try:
        rows = _read_table(store, path).to_pylist()
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


def _npy_shape(store, npy: str) -> Tuple[int, ...]:
    """The shape of a float32 C-order ``.npy`` file from its header, checked against the
    file's size (a cut file is refused) - without reading the array."""
    import numpy as np

    with store.open(npy) as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if fortran or dtype != np.dtype("<f4"):
        raise ValueError("not a float32 C-order array")
    n = 1
    for x in shape:
        n *= int(x)
    if store.size(npy) != offset + 4 * n:
        raise ValueError(f"{store.size(npy)} bytes for shape {tuple(shape)}")
    return tuple(shape)


def _embeddings_problem(emb_dir: str, part: "Part", path: str, dim: int,
                        store=LOCAL) -> Optional[str]:
    """Why a finished part's embedding files cannot be trusted, or None."""
    npy, paths = _embedding_files(emb_dir, part, store)
    if not (store.exists(npy) and store.exists(paths)):
        return "its embeddings are missing"
    try:
        t = _read_table(store, path, columns=["path", "status"]).to_pylist()
        ok = [r["path"] for r in t if r["status"] == STATUS_OK]
        shape = _npy_shape(store, npy)
        with store.open(paths, "rb") as f:
            listed = f.read().decode("utf-8").split("\n")[:-1]
    except (OSError, ValueError) as exc:
        return f"unreadable embeddings ({exc})"
    if shape != (len(ok), dim) or listed != ok:
        return f"embeddings of shape {shape} for {len(ok)} ok rows"
    return None


def read_part_meta(path: str) -> Optional[Dict[str, Any]]:
    """The ``quasar.run`` metadata of a finished part (None when absent/unreadable)."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
        return json.loads(md[RUN_META_KEY])
    except Exception:  # noqa: BLE001
        return None


def write_part(out_dir: str, part: Part, rows: Dict[int, dict], anchors: Sequence[str],
               identity: Dict[str, Any], emb_dir: Optional[str] = None, dim: int = 0) -> None:
    """Write a finished part: its embeddings first (when asked), then the Parquet part - the
    file whose presence means "done" - each to a temp name renamed into place."""
    import numpy as np
    import pyarrow as pa
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


def _embedding_files(emb_dir: str, part: Part, store=LOCAL) -> Tuple[str, str]:
    """``<emb_dir>/<part>.npy`` (float32 [n_ok, D], the part's ok rows in order) and
    ``<emb_dir>/<part>.paths.txt`` (their ``path`` cells, one per line)."""
    return (store.join(emb_dir, part.name + ".npy"),
            store.join(emb_dir, part.name + ".paths.txt"))


def _clean_temps(d: str) -> None:
    for n in os.listdir(d):  # an unfinished file of a killed run: redone whole
        if n.startswith(".") and n.endswith(TMP_SUFFIX):
            os.remove(os.path.join(d, n))


def _foreign_meta(path: str, store=LOCAL) -> Optional[Dict[str, Any]]:
    """The part's ``quasar.run`` metadata; raises for a readable Parquet file that is not a
    quasar part (someone else's file: never replaced); None for an unreadable one."""
    try:
        md = _read_schema(store, path).metadata or {}
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
    diff = [k for k, default in IDENTITY.items()
            if meta.get(k, default) != identity.get(k, default)]
    if diff:
        raise RayRunError(
            f"{path} was scored with other settings ({', '.join(diff)}: "
            f"{[meta.get(k, IDENTITY[k]) for k in diff]} vs {[identity.get(k) for k in diff]}); "
            "resume with the same bundle and options, --overwrite, or choose another --out")
    if meta.get("source") != part.key:
        raise RayRunError(
            f"{path} was made from {meta.get('source')!r}, this run maps that part to "
            f"{part.key!r} (inputs changed?); --overwrite or choose another --out")


def verify_part(out_dir: str, part: Part, identity: Dict[str, Any],
                emb_dir: Optional[str] = None, dim: int = 0, store=None) -> Optional[str]:
    """Why the finished ``part`` must be redone (None: it verifies). Raises for a part of
    another run (other settings, other source) or a file that is not a quasar part. On
    object storage (``out_dir`` a URL) the part is read from the store."""
    store = store_of(out_dir) if store is None else store
    path = store.join(out_dir, part.file)
    meta = _foreign_meta(path, store)
    if meta is None:
        return "unreadable, or no readable run identity"
    _check_same_run(path, meta, part, identity)
    why = part_problem(path, meta, list(identity.get("anchors") or []), store)
    if why is None and emb_dir is not None:
        why = _embeddings_problem(emb_dir, part, path, dim, store_of(emb_dir))
    return why


def prepare_output(out_dir: str, parts: List[Part], identity: Dict[str, Any], *,
                   resume: bool, overwrite: bool, emb_dir: Optional[str] = None,
                   dim: int = 0, report: Any = None) -> List[Part]:
    """Check / clean the output directory; return the parts still to compute: those not
    finished, and (``--resume``) those whose part or embedding files do not verify
    (:func:`verify_part`: logged, redone whole). ``out_dir`` / ``emb_dir`` may be URLs
    (object storage: nothing there is ever half written, so there are no temp files)."""
    store = store_of(out_dir)
    for d in (out_dir, emb_dir):
        if d is not None and not store_of(d).remote:
            os.makedirs(d, exist_ok=True)
            _clean_temps(d)
    names = store.listdir(out_dir)
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
        why = verify_part(out_dir, p, identity, emb_dir, dim, store)
        if why is not None:
            log.warning("%s does not verify (%s): redoing it", store.join(out_dir, p.file), why)
            if report is not None:
                report.parts_redone += 1
            todo.append(p)
    return todo


def _finished(out_dir: str, parts: List[Part]) -> List[str]:
    store = store_of(out_dir)
    names = set(store.listdir(out_dir))
    return [p.name for p in parts if p.file in names]


def read_parts(out_dir: str) -> List[dict]:
    """Every row of a Ray run's output directory (parts in name order; a local folder or a
    URL). For tools and tests."""
    store = store_of(out_dir)
    rows: List[dict] = []
    for n in sorted(store.listdir(out_dir)):
        if n.endswith(PART_SUFFIX) and not n.startswith("."):
            rows.extend(_read_table(store, store.join(out_dir, n)).to_pylist())
    return rows
