"""Helpers shared by the dataset readers: dataset facts, errors, label parsing, file checks."""
from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from quasar.constants import IMAGE_EXTENSIONS
from quasar.errors import DatasetError

from .base import DatasetSamples

log = logging.getLogger("quasar.evaluate.datasets")

MAX_LISTED = 5  # names shown in a "missing images" error


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one public dataset.

    Attributes:
        name: name as the paper writes it (``KonIQ10k``).
        url: where the dataset is published.
        role: ``target`` (benchmark with scores) or ``prompt`` (images that build anchors).
        subsets: subsets the reader offers.
        default_subset: the reference's default.
        score: what the score is (``MOS``, ``MOS z-score``, ...).
        higher_is_better: whether a higher score means a better image.
        layout: the files the reader expects under the root (one line each).
    """

    name: str
    url: str
    role: str
    subsets: Tuple[str, ...]
    default_subset: str
    score: str
    higher_is_better: bool
    layout: Tuple[str, ...] = field(default_factory=tuple)

    def where(self) -> str:
        """Sentence telling the user where to get the dataset."""
        return f"{self.name} is published at {self.url}"


# --- subsets -------------------------------------------------------------------------------

_SUBSET_ALIASES = {
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "testing": "test",
}


def resolve_subset(info: DatasetInfo, subset: Optional[str]) -> str:
    """Canonical subset name (``None`` -> the default); unknown names raise DatasetError."""
    if subset is None:
        return info.default_subset
    key = str(subset).strip().lower()
    key = _SUBSET_ALIASES.get(key, key)
    if key not in info.subsets:
        raise DatasetError(
            f"{info.name} has no subset {subset!r}; choose one of {list(info.subsets)} "
            f"(default {info.default_subset!r})."
        )
    return key


# --- files ---------------------------------------------------------------------------------


def check_root(info: DatasetInfo, root) -> Path:
    """Absolute dataset root; a missing directory raises DatasetError with the download URL."""
    path = Path(root).expanduser().absolute()
    if not path.is_dir():
        raise DatasetError(
            f"{info.name} root {path} is not a directory. Download the dataset and pass its "
            f"root folder; {info.where()}."
        )
    return path


def _require(info: DatasetInfo, path: Path, what: str, exists) -> Path:
    if not exists(path):
        layout = "; ".join(info.layout)
        raise DatasetError(
            f"{info.name}: {what} {path} not found. Expected layout under the root: {layout}. "
            f"{info.where()}."
        )
    return path


def require_file(info: DatasetInfo, path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise DatasetError naming it and the expected layout."""
    return _require(info, path, what, Path.is_file)


def require_dir(info: DatasetInfo, path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise DatasetError."""
    return _require(info, path, what, Path.is_dir)


def malformed(info: DatasetInfo, path: Path, problem: str) -> DatasetError:
    """DatasetError for a label file that exists but cannot be read as expected."""
    return DatasetError(f"{info.name}: {path} is malformed: {problem}. {info.where()}.")


class DirIndex:
    """Directory listings cached once per folder: fast existence checks for 10^5 files.

    ``find`` answers an exact name first and falls back to a case-insensitive match (some
    releases, e.g. TID2013, mix the case of file names and extensions).
    """

    def __init__(self) -> None:
        self._names: Dict[Path, Optional[set]] = {}
        self._lower: Dict[Path, Dict[str, str]] = {}

    def _listing(self, folder: Path) -> Optional[set]:
        if folder not in self._names:
            try:
                with os.scandir(folder) as it:
                    names = {e.name for e in it}
            except (FileNotFoundError, NotADirectoryError):
                names = None
            self._names[folder] = names
        return self._names[folder]

    def exists(self, path: Path) -> bool:
        names = self._listing(path.parent)
        return names is not None and path.name in names

    def find(self, path: Path) -> Optional[Path]:
        """``path`` itself, its case-insensitive twin in the same folder, or None."""
        names = self._listing(path.parent)
        if names is None:
            return None
        if path.name in names:
            return path
        folder = path.parent
        if folder not in self._lower:
            self._lower[folder] = {n.lower(): n for n in names}
        twin = self._lower[folder].get(path.name.lower())
        return folder / twin if twin is not None else None

    def images(self, folder: Path) -> List[str]:
        """Sorted image file names in ``folder`` (hidden files and non-images left out)."""
        try:
            with os.scandir(folder) as it:
                return sorted(
                    e.name
                    for e in it
                    if not e.name.startswith(".")
                    and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
                    and e.is_file()
                )
        except (FileNotFoundError, NotADirectoryError):
            return []


def missing_images_error(info: DatasetInfo, missing: Sequence[Path], total: int) -> DatasetError:
    """One error listing the first few missing images and how many there are."""
    shown = ", ".join(str(p) for p in missing[:MAX_LISTED])
    more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
    return DatasetError(
        f"{info.name}: {len(missing)} of {total} listed images are missing: {shown}{more}. "
        f"Extract the complete image archives under the dataset root (or pass "
        f"check_files=False to skip this check). {info.where()}."
    )


def check_images(info: DatasetInfo, paths: Sequence[Path]) -> None:
    """Raise one DatasetError if any of ``paths`` is not an existing file."""
    index = DirIndex()
    missing = [p for p in paths if not index.exists(p)]
    if missing:
        raise missing_images_error(info, missing, len(paths))


def make_samples(
    info: DatasetInfo,
    subset: str,
    root: Path,
    paths: Sequence[Path],
    scores: Iterable[float],
    *,
    check_files: bool,
    extra: Optional[Mapping[str, object]] = None,
) -> DatasetSamples:
    """Build DatasetSamples (checking image files when asked)."""
    paths = list(paths)
    score_arr = np.asarray(list(scores), dtype=np.float64)
    if len(score_arr) != len(paths):  # a bug in a reader, not user input
        raise RuntimeError(f"{info.name}: {len(paths)} paths but {len(score_arr)} scores")
    if not paths:
        raise DatasetError(
            f"{info.name}: subset {subset!r} under {root} holds no images; check the label "
            f"files. {info.where()}."
        )
    if check_files:
        check_images(info, paths)
    return DatasetSamples(
        name=info.name,
        subset=subset,
        root=root,
        paths=paths,
        scores=score_arr,
        higher_is_better=info.higher_is_better,
        extra=dict(extra or {}),
    )


# --- label parsing -------------------------------------------------------------------------


def parse_float(info: DatasetInfo, path: Path, value, where: str) -> float:
    """Float of a label cell; a non-number raises a DatasetError naming file and row."""
    try:
        out = float(str(value).strip())
    except (TypeError, ValueError):
        raise malformed(info, path, f"{where}: {value!r} is not a number") from None
    if math.isnan(out):
        raise malformed(info, path, f"{where}: score is NaN")
    return out


def read_csv_columns(
    info: DatasetInfo,
    path: Path,
    columns: Sequence[str],
    *,
    optional: Sequence[str] = (),
) -> Dict[str, List[str]]:
    """Read a CSV with a header; return the wanted columns (header names compared stripped).

    Missing required columns raise a DatasetError naming the file, the expected and the
    found columns. Empty lines are skipped.
    """
    require_file(info, path, "label file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise malformed(info, path, f"not a readable CSV ({exc})") from None
    if not rows:
        raise malformed(info, path, f"empty file, expected a header with columns {list(columns)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in columns if c not in header]
    if missing:
        raise malformed(
            info, path, f"missing column(s) {missing}; expected {list(columns)}, found {header}"
        )
    out: Dict[str, List[str]] = {}
    for name in list(columns) + [c for c in optional if c in header]:
        j = header.index(name)
        col = []
        for i, row in enumerate(rows[1:], start=2):
            if j >= len(row):
                raise malformed(info, path, f"line {i} has {len(row)} fields, expected {len(header)}")
            col.append(row[j].strip())
        out[name] = col
    return out


def read_whitespace_table(
    info: DatasetInfo, path: Path, min_fields: int, what: str
) -> List[List[str]]:
    """Rows of a whitespace-separated text file (no header); short rows raise DatasetError."""
    require_file(info, path, "label file")
    rows = []
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for i, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < min_fields:
                raise malformed(info, path, f"line {i} {line.strip()!r}: expected {what}")
            rows.append(fields)
    return rows


def read_csv_table(info: DatasetInfo, path: Path) -> Tuple[List[str], List[List[str]]]:
    """Header (stripped names) and rows (stripped cells) of a CSV; ragged rows raise."""
    require_file(info, path, "label file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [[c.strip() for c in r] for r in csv.reader(fh) if any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise malformed(info, path, f"not a readable CSV ({exc})") from None
    if not rows:
        raise malformed(info, path, "empty file, expected a header line")
    header = rows[0]
    for i, row in enumerate(rows[1:], start=2):
        if len(row) < len(header):
            raise malformed(info, path, f"line {i} has {len(row)} fields, expected {len(header)}")
    return header, rows[1:]


def canonical_split(value: str) -> str:
    """Split label as written in a file (``training``, ``val``) -> canonical subset name."""
    key = value.strip().lower()
    return _SUBSET_ALIASES.get(key, key)
