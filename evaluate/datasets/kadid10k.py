"""KADID-10k: 10,125 distorted images of 81 references, DCR "dmos" 1..5 (``dmos.csv``).

The released ``dmos.csv`` (kadid10k.zip from database.mmsp-kn.de) has the header
``dist_img,ref_img,dmos,var``. The QUASAR reference (``embeddings/datasets.py``, class
``KADID10k``) renames ``image``/``reference`` to ``dist_img``/``ref_img``, so it reads both
spellings; so does this reader.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from quasar.errors import DatasetError

from ._common import (
    DatasetInfo,
    check_root,
    make_samples,
    parse_float,
    read_csv_columns,
    resolve_subset,
)
from .base import DatasetSamples

LABELS = "dmos.csv"
IMAGES = "images"
SCORE = "dmos"
# column -> accepted header names, the release's first
COLUMNS: Dict[str, tuple] = {"image": ("dist_img", "image"), "reference": ("ref_img", "reference")}

INFO = DatasetInfo(
    name="KADID10k",
    url="http://database.mmsp-kn.de/kadid-10k-database.html",
    role="target",
    subsets=("all",),
    default_subset="all",
    # Despite its name, the column is a degradation-category rating (5 = imperceptible):
    # higher means better quality.
    score="DMOS (degradation category rating 1..5, higher is better)",
    higher_is_better=True,
    layout=(f"{LABELS} (columns dist_img, ref_img, dmos, var)", f"{IMAGES}/<image>"),
)


def _column(labels, cols: Dict[str, List[str]], key: str) -> List[str]:
    for name in COLUMNS[key]:
        if name in cols:
            return cols[name]
    raise DatasetError(
        f"KADID10k: {labels}: missing column {COLUMNS[key][0]!r} (or {COLUMNS[key][1]!r}); "
        f"the release's header is dist_img,ref_img,dmos,var. {INFO.where()}."
    )


def load(root, subset: Optional[str] = None, *, check_files: bool = True) -> DatasetSamples:
    """Read KADID-10k in the order of ``dmos.csv``."""
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    labels = root / LABELS
    optional = [n for names in COLUMNS.values() for n in names]
    cols = read_csv_columns(INFO, labels, (SCORE,), optional=optional)
    images, references = _column(labels, cols, "image"), _column(labels, cols, "reference")
    scores = [parse_float(INFO, labels, v, f"row {i}") for i, v in enumerate(cols[SCORE], 2)]
    paths = [root / IMAGES / name for name in images]
    refs = [root / IMAGES / name for name in references]
    return make_samples(
        INFO, subset, root, paths, scores, check_files=check_files, extra={"reference_path": refs}
    )
