"""TAD66k: 66k aesthetics images, score per image (``labels/merge/{train,test}.csv``)."""
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

LABEL_DIR = "labels/merge"
IMAGES = "images"
COLUMNS = ("image", "score")

INFO = DatasetInfo(
    name="TAD66k",
    url="https://github.com/woshidandan/TANet",
    role="target",
    subsets=("test", "train", "all"),
    default_subset="test",
    score="aesthetic score",
    higher_is_better=True,
    layout=(
        f"{LABEL_DIR}/train.csv and {LABEL_DIR}/test.csv (columns {', '.join(COLUMNS)})",
        f"{IMAGES}/<image>",
    ),
)


def load(root, subset: Optional[str] = None, *, check_files: bool = True) -> DatasetSamples:
    """Read TAD66k; ``all`` is train followed by test (the reference's order)."""
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    parts = ["train", "test"] if subset == "all" else [subset]
    paths, scores = [], []
    for part in parts:
        labels = root / LABEL_DIR / f"{part}.csv"
        cols = read_csv_columns(INFO, labels, COLUMNS)
        paths += [root / IMAGES / name for name in cols["image"]]
        scores += [parse_float(INFO, labels, v, f"row {i}") for i, v in enumerate(cols["score"], 2)]
    return make_samples(INFO, subset, root, paths, scores, check_files=check_files)
