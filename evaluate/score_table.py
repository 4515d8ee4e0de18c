"""Read a table of scores: the CSV / JSONL / Parquet that ``quasar score`` writes, or any such
file with a path column and one or more numeric score columns (the user's own ratings).

Used by ``quasar anchors --scores`` (anchors from rated images) and ``quasar report`` (HTML
report of one or more score files). A ``quasar score`` table has the columns ``path``,
``score_<anchor set>``..., ``status``, ``error``; rows whose status is not ``ok`` have no
score and are kept as *failed* rows with their reason. Other tables name their columns with
``path_column`` / ``score_columns``; without them the path column is ``path`` (or ``file``,
``filename``, ``image``...) and the score columns are every ``score_*`` column, else one of
``score``, ``mos``, ``rating``...
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from quasar.errors import DatasetError

STATUS_OK = "ok"
PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_name", "image_path", "name")
SCORE_COLUMNS = ("score", "mos", "dmos", "rating", "quality", "mean_score", "label")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "json", ".parquet": "parquet"}


@dataclass
class ScoreTable:
    """One score file in memory: ``paths`` in file order, ``scores`` (set name -> float64 [n],
    NaN where a row has no score), ``status`` / ``errors`` per row (``ok`` / ``""`` for tables
    without such columns)."""

    source: str
    paths: List[str]
    scores: Dict[str, np.ndarray]
    columns: Dict[str, str] = field(default_factory=dict)   # set name -> column in the file
    status: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> List[str]:
        return list(self.scores)

    @property
    def failed(self) -> np.ndarray:
        """Rows whose status is not ``ok``."""
        return np.array([s != STATUS_OK for s in self.status], dtype=bool)

    def nonfinite(self, name: str) -> np.ndarray:
        """Indices of the rows whose status is ``ok`` but whose score in set ``name`` is not
        a finite number (empty, NaN, ±inf): they cannot be ranked or averaged, and are
        reported as such instead of being dropped silently."""
        return np.flatnonzero(~self.failed & ~np.isfinite(self.scores[name]))


def run_identity_of(path) -> Optional[dict]:
    """The run identity ``quasar score`` recorded with a score file (its ``.run.json``
    sidecar, or a Parquet file's ``quasar.run`` metadata), None when there is none or it
    cannot be read (a table from elsewhere)."""
    path = os.fspath(path)
    from quasar.runtime.writers import PARQUET_RUN_KEY, RUN_SUFFIX

    try:
        if os.path.isfile(path + RUN_SUFFIX):
            with open(path + RUN_SUFFIX, encoding="utf-8") as f:
                ident = json.load(f)
        elif _format(path) == "parquet":
            import pyarrow.parquet as pq

            raw = (pq.read_schema(path).metadata or {}).get(PARQUET_RUN_KEY)
            ident = json.loads(raw) if raw else None
        else:
            return None
    except (OSError, ValueError, ImportError, DatasetError):
        return None
    return ident if isinstance(ident, dict) else None


def _format(path: str) -> str:
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FORMATS:
        raise DatasetError(f"{path}: unknown score-file format {ext or '(no extension)'!r}; "
                           f"use one of {', '.join(sorted(FORMATS))}")
    return FORMATS[ext]


def _read_rows(path: str) -> List[dict]:
    fmt = _format(path)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: score file not found; give the CSV / JSONL / Parquet file "
                           "written by `quasar score` or a table with a path and a score column")
    try:
        if fmt == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError as exc:
                raise DatasetError(f"{path}: reading Parquet needs pyarrow: pip install "
                                   '"quasar-iqa[parquet]", or convert the file to CSV') from exc
            return pq.read_table(path).to_pylist()
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            if fmt in ("csv", "tsv"):
                return list(csv.DictReader(f, delimiter="," if fmt == "csv" else "\t"))
            if fmt == "json":
                data = json.load(f)
                if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                    raise DatasetError(f"{path}: a .json score file must hold a list of objects "
                                       "(one per image); or write JSON lines (.jsonl)")
                return data
            rows = []
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DatasetError(f"{path}: line {i} is not valid JSON ({exc.msg}); "
                                           "fix or remove that line") from exc
            return rows
    except DatasetError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the score file ({exc}); check its format") from exc


def _number(value, path: str, row: int, column: str) -> float:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "null", "na")):
        return math.nan
    if isinstance(value, bool):
        raise DatasetError(f"{path}: row {row}, column {column!r}: {value!r} is not a number; "
                           "name the numeric score column with --score-column")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: row {row}, column {column!r}: {value!r} is not a number; "
                           "name the numeric score column with --score-column") from None


def _names(v: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    if v is None:
        return None
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [str(s) for s in v]


def read_score_table(path, *, path_column: Optional[str] = None,
                     score_columns: Union[None, str, Sequence[str]] = None) -> ScoreTable:
    """Read a score file (see the module docstring). Raises :class:`DatasetError` naming the
    file, the column or row, and the flag that fixes it."""
    path = os.fspath(path)
    rows = _read_rows(path)
    if not rows:
        raise DatasetError(f"{path}: the score file has no rows")
    cols = list(dict.fromkeys(k for r in rows[:1000] for k in r))
    if path_column is None:
        path_column = next((c for c in PATH_COLUMNS if c in cols), None)
        if path_column is None:
            raise DatasetError(f"{path}: no path column (looked for {', '.join(PATH_COLUMNS)}; "
                               f"the file has {cols}); name it with --path-column")
    elif path_column not in cols:
        raise DatasetError(f"{path}: no column {path_column!r} (the file has {cols}); "
                           "fix --path-column")
    wanted = _names(score_columns)
    if wanted:
        missing = [c for c in wanted if c not in cols and f"score_{c}" not in cols]
        if missing:
            raise DatasetError(f"{path}: no score column {missing} (the file has {cols}); "
                               "fix --score-column")
        chosen = [c if c in cols else f"score_{c}" for c in wanted]
    else:
        chosen = [c for c in cols if c.startswith("score_")]
        if not chosen:
            chosen = [c for c in SCORE_COLUMNS if c in cols][:1]
        if not chosen:
            raise DatasetError(f"{path}: no score column (no score_* column, none of "
                               f"{', '.join(SCORE_COLUMNS)}; the file has {cols}); name it with "
                               "--score-column")
    has_status = "status" in cols
    paths: List[str] = []
    status: List[str] = []
    errors: List[str] = []
    values = {c: np.empty(len(rows), dtype=np.float64) for c in chosen}
    for i, r in enumerate(rows):
        p = r.get(path_column)
        if p is None or str(p) == "":
            raise DatasetError(f"{path}: row {i + 1} has an empty {path_column!r}; every row needs "
                               "the image path")
        paths.append(str(p))
        st = str(r.get("status") or STATUS_OK) if has_status else STATUS_OK
        status.append(st)
        errors.append(str(r.get("error") or ""))
        for c in chosen:
            values[c][i] = _number(r.get(c), path, i + 1, c) if st == STATUS_OK else math.nan
    name_of = {c: c[len("score_"):] if c.startswith("score_") and len(c) > 6 else c for c in chosen}
    return ScoreTable(source=path, paths=paths,
                      scores={name_of[c]: values[c] for c in chosen},
                      columns={name_of[c]: c for c in chosen}, status=status, errors=errors)


__all__ = ["ScoreTable", "read_score_table", "run_identity_of", "STATUS_OK"]
