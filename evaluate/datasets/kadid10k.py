"""KADID-10k: 10,125 distorted images of 81 references, DCR "dmos" 1..5 (``dmos.csv``)."""
from __future__ import annotations

from typing import Optional

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
COLUMNS = ("image", "reference", "dmos")

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
    layout=(f"{LABELS} (columns {', '.join(COLUMNS)})", f"{IMAGES}/<image>"),
)


def load(root, subset: Optional[str] = None, *, check_files: bool = True) -> DatasetSamples:
    """Read KADID-10k in the order of ``dmos.csv``."""
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    labels = root / LABELS
    cols = read_csv_columns(INFO, labels, COLUMNS)
    scores = [parse_float(INFO, labels, v, f"row {i}") for i, v in enumerate(cols["dmos"], 2)]
    paths = [root / IMAGES / name for name in cols["image"]]
    refs = [root / IMAGES / name for name in cols["reference"]]
    return make_samples(
        INFO, subset, root, paths, scores, check_files=check_files, extra={"reference_path": refs}
    )
