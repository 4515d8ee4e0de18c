"""Score tables written row by row so that a killed run loses nothing, and resumed later.

Columns, in order: ``path``, one ``score_<anchor set>`` per selected anchor set (e.g.
``score_text``), ``status`` (``ok`` or the error kind) and ``error`` (the message, empty
when ok). Formats by extension of the output file:

* ``.csv`` — appended and flushed after every batch; scores written with Python's
  shortest round-trip ``repr``; an empty cell for failed rows.
* ``.jsonl`` / ``.ndjson`` — one JSON object per line; ``null`` scores for failed rows.
* ``.parquet`` — needs pyarrow. Rows are journalled to ``<out>.partial.jsonl`` during the
  run; the Parquet file is written from the journal at the end (temp file + rename) and
  the journal removed. A killed run leaves the journal, which ``--resume`` continues.

Resume (:meth:`ScoreTable.prepare_resume`): a torn last line (the process killed mid-write)
is cut off; rows whose status is not ``ok`` are dropped so that their inputs are tried
again; the remaining ``ok`` paths are returned so that the run skips them.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, IO, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from quasar.bundle.atomic import atomic_output, atomic_write
from quasar.constants import STATUS_OK
from quasar.errors import DiskFullError, OutputError, optional_import
from quasar.text import csv_cell, csv_uncell, decode_path, encode_path, one_line

TABLE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PARQUET_RUN_KEY = b"quasar.run"
RUN_SUFFIX = ".run.json"  # the run identity sidecar (quasar.runtime.integrity)


@dataclass(frozen=True)
class Row:
    """One input's result: scores per anchor set (NaN when it failed), status and message."""

    path: str
    scores: Dict[str, float]
    status: str = STATUS_OK
    error: str = ""


def staged_name(path: str) -> str:
    """``dir/scores.csv`` -> ``dir/.scores.csv.overwrite``: where an ``--overwrite`` run
    writes until it completes (hidden: folder walks and globs skip it). The existing output
    is replaced only then, so that an input the lazy input stream reaches late is intact
    when it is met (quasar.runtime.integrity.OutputGuard)."""
    d, b = os.path.split(str(path))
    return os.path.join(d, f".{b}.overwrite")


def _remove(path: Optional[str]) -> None:
    if path and os.path.lexists(path):
        os.remove(path)


def score_column(anchor_name: str) -> str:
    return f"score_{anchor_name}"


def table_columns(anchor_names: Sequence[str]) -> List[str]:
    return ["path"] + [score_column(a) for a in anchor_names] + ["status", "error"]


def output_format(path: str) -> str:
    """``csv`` / ``jsonl`` / ``parquet`` from the file extension (case-insensitive)."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in TABLE_FORMATS:
        raise OutputError(
            f"--out {path}: unknown output format {ext or '(no extension)'!r}; "
            f"use one of {', '.join(sorted(TABLE_FORMATS))}"
        )
    return TABLE_FORMATS[ext]


def require_pyarrow():
    optional_import("pyarrow.parquet", "parquet", "Parquet output", error=OutputError,
                    also="(or pip install pyarrow), or write .csv / .jsonl")
    return optional_import("pyarrow", "parquet", "Parquet output", error=OutputError)


def disk_full(path: str, exc: OSError, rows: int) -> Exception:
    """A write that failed for lack of space (ENOSPC, EDQUOT, EFBIG) as a message naming the
    file; other OSErrors get the file's name too."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = ("disk full (file size limit reached)" if exc.errno == errno.EFBIG
               else "disk full")
        err: Exception = DiskFullError(
            f"{path}: {why} ({exc.strerror}) while writing; the {rows} rows written before "
            "are kept - free some space and run the same command with --resume")
    else:
        err = OSError(exc.errno, f"{path}: cannot write ({exc.strerror or exc})")
    return err


def _finite(v) -> Optional[float]:
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------- encoding rows
def _csv_cells(row: Row, anchors: Sequence[str]) -> List[str]:
    cells = [csv_cell(encode_path(row.path))]
    for a in anchors:
        v = _finite(row.scores.get(a, float("nan")))
        cells.append("" if v is None else repr(v))
    cells += [csv_cell(row.status), csv_cell(one_line(row.error))]
    return cells


def _json_line(row: Row, anchors: Sequence[str]) -> str:
    d = {"path": encode_path(row.path)}
    for a in anchors:
        d[score_column(a)] = _finite(row.scores.get(a, float("nan")))
    d["status"] = row.status
    d["error"] = one_line(row.error) or None
    return json.dumps(d, ensure_ascii=True, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- reading back
@dataclass
class _Scan:
    """Where the complete records of a line table end (anything after is a torn tail)."""

    valid_end: int = 0
    size: int = 0
    header: Optional[List[str]] = None


def _binary_lines(f: IO[bytes], pos: List[int]) -> Iterator[str]:
    for raw in f:
        pos[0] += len(raw)
        pos[1] = raw.endswith(b"\n")
        yield raw.decode("utf-8", "surrogateescape")


def _iter_csv(path: str, columns: Sequence[str], scan: _Scan) -> Iterator[Tuple[str, str, int, int]]:
    ncol = len(columns)
    with open(path, "rb") as f:
        pos = [0, True]
        reader = csv.reader(_binary_lines(f, pos))
        start = 0
        first = True
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if f.read(1):  # not at the end: real corruption
                    raise OutputError(f"{path}: malformed CSV at byte {start}: {exc}") from exc
                break  # torn tail (an unterminated quoted field)
            if first and pos[1] and rec != list(columns):
                raise OutputError(
                    f"{path} has columns {rec}, this run writes {list(columns)} (another "
                    "--anchors selection?); resume with the same options or use another --out"
                )
            complete = pos[1] and len(rec) == ncol
            if not complete:
                if f.read(1) or (len(rec) != ncol and pos[1]):
                    raise OutputError(
                        f"{path}: malformed CSV record at byte {start} ({len(rec)} fields, "
                        f"expected {ncol}); it is not a score table this run can resume"
                    )
                break  # torn last line
            if first:
                first = False
                scan.header = rec
            else:
                yield decode_path(csv_uncell(rec[0])), csv_uncell(rec[-2]), start, pos[0]
            start = pos[0]
            scan.valid_end = pos[0]


def _iter_jsonl(path: str, columns: Sequence[str], scan: _Scan) -> Iterator[Tuple[str, str, int, int]]:
    with open(path, "rb") as f:
        start = 0
        for raw in f:
            end = start + len(raw)
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("no newline")
                d = json.loads(raw)
                if not isinstance(d, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                if f.read(1) or raw.endswith(b"\n"):
                    raise OutputError(f"{path}: malformed JSON line at byte {start}: {exc}") from exc
                break  # torn last line
            if scan.header is None:
                if list(d) != list(columns):
                    raise OutputError(
                        f"{path} has fields {list(d)}, this run writes {list(columns)} (another "
                        "--anchors selection?); resume with the same options or use another --out"
                    )
                scan.header = list(d)
            p = d.get("path")
            yield (decode_path(p) if isinstance(p, str) else p), d.get("status"), start, end
            start = end
            scan.valid_end = end


# --------------------------------------------------------------------------- the table
class ScoreTable:
    """A CSV / JSONL / Parquet score table on disk (``path``), or CSV on stdout (None)."""

    def __init__(self, path: Optional[str], anchor_names: Sequence[str], stream: Optional[IO[str]] = None):
        self.path = None if path is None else str(path)
        self.anchors = list(anchor_names)
        self.columns = table_columns(self.anchors)
        self.format = "csv" if self.path is None else output_format(self.path)
        if self.format == "parquet":
            require_pyarrow()
        self._stream = stream
        self._f: Optional[IO[str]] = None
        self._csv = None
        self.rows_written = 0
        #: run identity written into a Parquet file's metadata (key ``quasar.run``)
        self.metadata: Optional[Dict[str, object]] = None
        #: --overwrite: rows go to a staged journal; the output is replaced at close
        self.staged = False

    # the file rows are appended to: the output itself, or the Parquet journal
    @property
    def journal(self) -> Optional[str]:
        if self.path is None:
            return None
        base = staged_name(self.path) if self.staged else self.path
        return base + ".partial.jsonl" if self.format == "parquet" else base

    def stage(self) -> None:
        """``--overwrite``: write this run's rows to a staged journal (a stale one of a killed
        run is removed); :meth:`close` replaces the existing output only when the run
        completes. Call after :meth:`exists` (which looks at the existing output)."""
        self.staged = True
        _remove(self.journal)

    def drop_stage(self) -> None:
        """A staged run that did not complete: its rows go, the existing output stays."""
        if self.staged:
            _remove(self.journal)

    @property
    def _line_format(self) -> str:
        return "jsonl" if self.format == "parquet" else self.format

    def exists(self) -> bool:
        """True when a previous run left something to resume or to overwrite."""
        if self.path is None:
            return False
        return any(os.path.exists(p) and os.path.getsize(p) > 0 for p in {self.path, self.journal})

    def _iter(self, scan: _Scan):
        it = _iter_csv if self._line_format == "csv" else _iter_jsonl
        return it(self.journal, self.columns, scan)

    def _seed_journal_from_parquet(self) -> None:
        pq = require_pyarrow().parquet
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:  # noqa: BLE001 - any pyarrow failure means "not readable"
            raise OutputError(f"{self.path}: not a readable Parquet file ({exc}); use another --out") from exc
        names = pf.schema_arrow.names
        if list(names) != self.columns:
            raise OutputError(
                f"{self.path} has columns {names}, this run writes {self.columns} (another "
                "--anchors selection?); resume with the same options or use another --out"
            )
        ident = self.parquet_identity()
        if ident is not None:  # the journal's identity sidecar, as during the run
            with atomic_write(self.path + RUN_SUFFIX, "w", encoding="utf-8") as f:
                f.write(json.dumps(ident, indent=1, sort_keys=True) + "\n")
        with atomic_write(self.journal, "w", encoding="utf-8") as out:
            for batch in pf.iter_batches(batch_size=65536):
                for d in batch.to_pylist():
                    scores = {a: (float("nan") if d[score_column(a)] is None else d[score_column(a)])
                              for a in self.anchors}
                    out.write(_json_line(Row(decode_path(d["path"]), scores, d["status"],
                                             d["error"] or ""), self.anchors))

    def parquet_identity(self) -> Optional[Dict[str, object]]:
        """The run identity in the metadata of a finished Parquet output (None if absent)."""
        pq = require_pyarrow().parquet
        try:
            meta = pq.read_schema(self.path).metadata or {}
        except Exception as exc:  # noqa: BLE001
            raise OutputError(f"{self.path}: not a readable Parquet file ({exc}); use another --out") from exc
        raw = meta.get(PARQUET_RUN_KEY)
        if raw is None:
            return None
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise OutputError(f"{self.path}: unreadable run identity in its metadata") from exc
        return d if isinstance(d, dict) else None

    def scan_ok(self) -> Tuple[Set[str], int]:
        """Paths with an ``ok`` row in the existing output, and the number of other rows.

        Validates the columns; tolerates a torn last line (repaired by :meth:`compact`).
        """
        if self.format == "parquet" and not os.path.exists(self.journal) and os.path.exists(self.path):
            self._seed_journal_from_parquet()
        ok: Set[str] = set()
        other = 0
        if not os.path.exists(self.journal):
            return ok, other
        scan = _Scan()
        for path, status, _, _ in self._iter(scan):
            if status == STATUS_OK:
                ok.add(path)
            else:
                other += 1
        return ok, other

    def compact(self, keep: Set[str]) -> int:
        """Rewrite the output keeping only ``ok`` rows whose path is in ``keep`` (first
        occurrence), cutting a torn tail; atomic (temp file + rename). Returns rows kept."""
        src = self.journal
        if not os.path.exists(src):
            return 0
        scan = _Scan()
        seen: Set[str] = set()
        spans: List[Tuple[int, int]] = []
        kept = 0
        all_kept = True
        for path, status, start, end in self._iter(scan):
            if status == STATUS_OK and path in keep and path not in seen:
                seen.add(path)
                kept += 1
                if spans and spans[-1][1] == start:
                    spans[-1] = (spans[-1][0], end)
                else:
                    spans.append((start, end))
            else:
                all_kept = False
        size = os.path.getsize(src)
        if all_kept:
            if scan.valid_end < size:
                os.truncate(src, scan.valid_end)  # cut the torn last line
            return kept
        with open(src, "rb") as fin, atomic_write(src, "wb") as fout:
            if self._line_format == "csv" and scan.header is not None:
                fin.seek(0)
                fout.write(fin.readline())
            for start, end in spans:
                fin.seek(start)
                remaining = end - start
                while remaining:
                    chunk = fin.read(min(remaining, 1 << 20))
                    fout.write(chunk)
                    remaining -= len(chunk)
        return kept

    def discard(self) -> None:
        """Remove what a previous run left (``--overwrite``)."""
        for p in {self.path, self.journal}:
            if p and os.path.exists(p):
                os.remove(p)

    # ---------------------------------------------------------------- appending
    def open(self) -> None:
        """Start appending (after :meth:`compact` when resuming)."""
        if self.path is None:
            self._f = self._stream if self._stream is not None else sys.stdout
            need_header = True
        else:
            parent = os.path.dirname(os.path.abspath(self.journal))
            os.makedirs(parent, exist_ok=True)
            need_header = not os.path.exists(self.journal) or os.path.getsize(self.journal) == 0
            self._f = open(self.journal, "a", encoding="utf-8", errors="surrogateescape", newline="")
        if self._line_format == "csv":
            self._csv = csv.writer(self._f, lineterminator="\n")
            if need_header:
                self._csv.writerow(self.columns)
                self._f.flush()

    def write(self, rows: Sequence[Row]) -> None:
        """Append rows and flush them to the OS (a killed process keeps them)."""
        if self._f is None:
            self.open()
        try:
            if self._csv is not None:
                self._csv.writerows(_csv_cells(r, self.anchors) for r in rows)
            else:
                self._f.write("".join(_json_line(r, self.anchors) for r in rows))
            self._f.flush()
        except OSError as exc:
            if self.path is None:
                raise
            raise disk_full(self.journal, exc, self.rows_written) from exc
        self.rows_written += len(rows)

    def close(self, complete: bool = True) -> None:
        """Flush and close; with ``complete`` a Parquet output is built from its journal."""
        if self._f is None and self.path is not None and complete and self.format == "parquet":
            self.open()  # an empty run still leaves a (possibly empty) Parquet file
        if self._f is not None:
            self._f.flush()
            if self.path is not None:
                os.fsync(self._f.fileno())
                self._f.close()
            self._f = None
        if complete and self.format == "parquet":
            self._write_parquet()
            if self.staged:  # the existing output's own journal (a killed run's) is replaced
                _remove(self.path + ".partial.jsonl")
        elif complete and self.staged and self.path is not None:
            os.replace(self.journal, self.path)

    def _write_parquet(self) -> None:
        pa = require_pyarrow()
        pq = pa.parquet
        schema = pa.schema([("path", pa.string())]
                           + [(score_column(a), pa.float64()) for a in self.anchors]
                           + [("status", pa.string()), ("error", pa.string())])
        if self.metadata:
            schema = schema.with_metadata({PARQUET_RUN_KEY: json.dumps(self.metadata,
                                                                       sort_keys=True)})
        with atomic_output(self.path) as tmp:
            with pq.ParquetWriter(str(tmp), schema) as w:
                buf: List[dict] = []
                with open(self.journal, "rb") as f:
                    for raw in f:
                        d = json.loads(raw)
                        d["error"] = d.get("error") or ""
                        buf.append(d)
                        if len(buf) >= 65536:
                            w.write_table(pa.Table.from_pylist(buf, schema=schema))
                            buf = []
                if buf:
                    w.write_table(pa.Table.from_pylist(buf, schema=schema))
        os.remove(self.journal)


# --------------------------------------------------------------------------- embeddings
def paths_sidecar(path: str) -> str:
    """``emb.npy`` -> ``emb.paths.txt``: the input path of each embedding row, one per line."""
    return os.path.splitext(str(path))[0] + ".paths.txt"


def _raw_header(path: str) -> Tuple[Tuple[int, ...], int]:
    """(shape, data offset) of a float32 C-order .npy or single-tensor .safetensors file."""
    with open(path, "rb") as f:
        if path.lower().endswith(".npy"):
            version = np.lib.format.read_magic(f)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, fortran, dtype = reader.get(version, np.lib.format.read_array_header_2_0)(f)
            if fortran or dtype != np.dtype("<f4"):
                raise OutputError(f"{path}: not a float32 C-order array; use another --save-embeddings file")
            return tuple(shape), f.tell()
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        t = header.get("embeddings")
        if not t or t.get("dtype") != "F32":
            raise OutputError(f"{path}: no float32 'embeddings' tensor; use another --save-embeddings file")
        return tuple(t["shape"]), 8 + n + t["data_offsets"][0]


class EmbeddingsWriter:
    """Embeddings of the ``ok`` rows, in output order, as ``.npy`` or ``.safetensors``
    (float32 [N, D], tensor ``embeddings``), plus ``<stem>.paths.txt`` naming each row.

    During the run rows go to ``<file>.partial`` (raw float32) and the paths file; at the
    end the final file is built from them (temp file + rename) and the raw journal removed.
    """

    def __init__(self, path: str, dim: int, metadata: Optional[Dict[str, str]] = None):
        self.path = str(path)
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in (".npy", ".safetensors"):
            raise OutputError(f"--save-embeddings {path}: use a .npy or .safetensors file name")
        self.dim = int(dim)
        self.metadata = dict(metadata or {})
        self.raw = self.path + ".partial"
        self.paths_file = self.final_paths = paths_sidecar(self.path)
        self.staged = False
        if os.path.abspath(self.paths_file) == os.path.abspath(self.path):
            raise OutputError(f"--save-embeddings {path}: choose a name not ending in .paths.txt")
        self._raw_f = None
        self._paths_f = None
        self.rows = 0

    def exists(self) -> bool:
        return any(os.path.exists(p) for p in (self.path, self.raw))

    def discard(self) -> None:
        for p in (self.path, self.raw, self.paths_file):
            if os.path.exists(p):
                os.remove(p)

    def stage(self) -> None:
        """``--overwrite``: rows go to staged files (:func:`staged_name`); the existing
        embeddings and paths file are replaced only when the run completes."""
        self.staged = True
        self.raw = staged_name(self.path) + ".partial"
        self.paths_file = staged_name(self.final_paths)
        for p in (self.raw, self.paths_file):
            _remove(p)

    def drop_stage(self) -> None:
        if self.staged:
            for p in (self.raw, self.paths_file):
                _remove(p)

    def _row_bytes(self) -> int:
        return 4 * self.dim

    def _seed_from_final(self) -> None:
        shape, offset = _raw_header(self.path)
        if len(shape) != 2 or shape[1] != self.dim:
            raise OutputError(f"{self.path} holds shape {shape}, this model gives [N, {self.dim}]; use another file")
        with open(self.path, "rb") as fin, atomic_write(self.raw, "wb") as fout:
            fin.seek(offset)
            remaining = shape[0] * self._row_bytes()
            while remaining:
                chunk = fin.read(min(remaining, 1 << 22))
                if not chunk:
                    raise OutputError(f"{self.path} is truncated; delete it or use another file")
                fout.write(chunk)
                remaining -= len(chunk)

    def journal_paths(self) -> List[str]:
        """Paths of the rows already journalled (repairing a torn tail of either file)."""
        if not os.path.exists(self.raw) and os.path.exists(self.path):
            self._seed_from_final()
        if not os.path.exists(self.raw):
            return []
        n_raw = os.path.getsize(self.raw) // self._row_bytes()
        paths: List[str] = []
        end = 0
        if os.path.exists(self.paths_file):
            with open(self.paths_file, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n") or len(paths) >= n_raw:
                        break
                    paths.append(decode_path(raw[:-1].decode("utf-8", "surrogateescape")))
                    end += len(raw)
        n = len(paths)
        os.truncate(self.raw, n * self._row_bytes())
        if os.path.exists(self.paths_file):
            os.truncate(self.paths_file, end)
        return paths

    def compact(self, paths: List[str], keep: Set[str]) -> None:
        """Keep only journalled rows whose path is in ``keep`` (first occurrence)."""
        sel = []
        seen: Set[str] = set()
        for i, p in enumerate(paths):
            if p in keep and p not in seen:
                seen.add(p)
                sel.append(i)
        if len(sel) == len(paths):
            return
        rb = self._row_bytes()
        with open(self.raw, "rb") as fin, atomic_write(self.raw, "wb") as fout, \
                atomic_write(self.paths_file, "wb") as pout:
            for i in sel:
                fin.seek(i * rb)
                fout.write(fin.read(rb))
                pout.write(encode_path(paths[i]).encode("utf-8") + b"\n")

    def write(self, paths: Sequence[str], emb: np.ndarray) -> None:
        if self._raw_f is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._raw_f = open(self.raw, "ab")
            self._paths_f = open(self.paths_file, "a", encoding="utf-8", errors="surrogateescape", newline="\n")
        emb = np.ascontiguousarray(emb, dtype="<f4").reshape(len(paths), self.dim)
        try:
            self._raw_f.write(emb.tobytes())
            self._raw_f.flush()
        except OSError as exc:
            raise disk_full(self.raw, exc, self.rows) from exc
        try:
            self._paths_f.write("".join(encode_path(p) + "\n" for p in paths))
            self._paths_f.flush()
        except OSError as exc:
            raise disk_full(self.paths_file, exc, self.rows) from exc
        self.rows += len(paths)

    def close(self, complete: bool = True) -> None:
        for f in (self._raw_f, self._paths_f):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        self._raw_f = self._paths_f = None
        if complete:
            self._finish()

    def _finish(self) -> None:
        if not os.path.exists(self.raw):
            open(self.raw, "wb").close()
            open(self.paths_file, "a").close()
        n = os.path.getsize(self.raw) // self._row_bytes()
        with atomic_write(self.path, "wb") as fout:
            if self.path.lower().endswith(".npy"):
                np.lib.format.write_array_header_2_0(
                    fout, {"descr": "<f4", "fortran_order": False, "shape": (n, self.dim)})
            else:
                meta = {k: str(v) for k, v in self.metadata.items()}
                meta["paths_file"] = os.path.basename(self.final_paths)
                meta["rows"] = str(n)
                header = {"__metadata__": meta,
                          "embeddings": {"dtype": "F32", "shape": [n, self.dim],
                                         "data_offsets": [0, n * self._row_bytes()]}}
                hb = json.dumps(header, separators=(",", ":")).encode()
                hb += b" " * (-len(hb) % 8)
                fout.write(len(hb).to_bytes(8, "little") + hb)
            with open(self.raw, "rb") as fin:
                while True:
                    chunk = fin.read(1 << 22)
                    if not chunk:
                        break
                    fout.write(chunk)
        os.remove(self.raw)
        if self.staged:  # the paths of the new rows replace the old ones (right after them)
            os.replace(self.paths_file, self.final_paths)
            _remove(self.path + ".partial")


def read_table(path: str) -> List[dict]:
    """Rows of a finished score table as dicts (``None`` for missing scores), paths decoded
    (:func:`decode_path`) and the CSV formula guard removed, so every value is what the run
    saw. For tools and tests; reads everything into memory."""
    fmt = output_format(path)
    if fmt == "parquet":
        rows = require_pyarrow().parquet.read_table(path).to_pylist()
    else:
        with open(path, encoding="utf-8", newline="") as f:
            if fmt == "jsonl":
                rows = [json.loads(line) for line in f if line.strip()]
            else:
                rows = list(csv.DictReader(f))
                for r in rows:
                    for k, v in r.items():
                        if k.startswith("score_"):
                            r[k] = float(v) if v != "" else None
                        elif isinstance(v, str):
                            r[k] = csv_uncell(v)
    for r in rows:
        if isinstance(r.get("path"), str):
            r["path"] = decode_path(r["path"])
    return rows
