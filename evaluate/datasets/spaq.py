"""SPAQ: 11,125 smartphone photos, MOS 0..100 (Excel annotation file)."""
from __future__ import annotations

from typing import Optional

from quasar.errors import DatasetError

from ._common import (
    DatasetInfo,
    check_root,
    make_samples,
    malformed,
    parse_float,
    require_file,
    resolve_subset,
)
from .base import DatasetSamples

LABELS = "Annotations/MOS and Image attribute scores.xlsx"
IMAGES = "TestImage"
NAME_COL = "Image name"
MOS_COL = "MOS"

INFO = DatasetInfo(
    name="SPAQ",
    url="https://github.com/h4nwei/SPAQ",
    role="target",
    # SPAQ has no official split; the reference calls the whole set (folder TestImage) "test".
    subsets=("test",),
    default_subset="test",
    score="MOS (0..100)",
    higher_is_better=True,
    layout=(f"{LABELS} (first sheet, columns '{NAME_COL}', '{MOS_COL}')", f"{IMAGES}/<Image name>"),
)


def _cell_name(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def load(
    root,
    subset: Optional[str] = None,
    *,
    image_dir: str = IMAGES,
    check_files: bool = True,
) -> DatasetSamples:
    """Read SPAQ in the order of the annotation sheet.

    ``image_dir`` points at another folder of the same images (e.g. a copy resized to 512 px
    on the short side, as the paper's SPAQ-512 runs).
    """
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    labels = require_file(INFO, root / LABELS, "annotation file")
    try:
        import openpyxl
    except ImportError:  # pragma: no cover - openpyxl is in the evaluate extra
        raise DatasetError(
            "SPAQ labels are an Excel file; install openpyxl (pip install 'quasar-iqa[evaluate]')."
        ) from None
    try:
        book = openpyxl.load_workbook(labels, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several types for a corrupt file
        raise malformed(INFO, labels, f"not a readable .xlsx workbook ({exc})") from None
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = next(rows, None) or ()
        header = [str(h).strip() if h is not None else "" for h in header]
        missing = [c for c in (NAME_COL, MOS_COL) if c not in header]
        if missing:
            raise malformed(
                INFO, labels, f"missing column(s) {missing}; expected '{NAME_COL}' and '{MOS_COL}', found {header}"
            )
        j, k = header.index(NAME_COL), header.index(MOS_COL)
        paths, scores = [], []
        for i, row in enumerate(rows, start=2):
            if row is None or all(v is None for v in row):
                continue
            name = row[j] if j < len(row) else None
            if name is None:
                raise malformed(INFO, labels, f"row {i} has no '{NAME_COL}'")
            paths.append(root / image_dir / _cell_name(name))
            scores.append(parse_float(INFO, labels, row[k] if k < len(row) else None, f"row {i}"))
    finally:
        book.close()
    return make_samples(INFO, subset, root, paths, scores, check_files=check_files)
