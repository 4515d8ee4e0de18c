"""TID2013: 3000 distorted images of 25 references, MOS 0..9 (``mos_with_names.txt``)."""
from __future__ import annotations

from typing import Optional

from ._common import (
    DatasetInfo,
    DirIndex,
    make_samples,
    parse_float,
    read_whitespace_table,
    resolve_subset,
    check_root,
)
from .base import DatasetSamples

LABELS = "mos_with_names.txt"
IMAGES = "distorted_images"
REFERENCES = "reference_images"

INFO = DatasetInfo(
    name="TID2013",
    url="http://www.ponomarenko.info/tid2013.htm",
    role="target",
    subsets=("all",),
    default_subset="all",
    score="MOS (0..9)",
    higher_is_better=True,
    layout=(
        f"{LABELS} (lines 'MOS name', space-separated)",
        f"{IMAGES}/<name>",
        f"{REFERENCES}/I01.BMP ... (optional)",
    ),
)


def load(root, subset: Optional[str] = None, *, check_files: bool = True) -> DatasetSamples:
    """Read TID2013 in the order of ``mos_with_names.txt``.

    File names are matched case-insensitively when the exact name is absent (the release
    mixes upper- and lower-case names).
    """
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    labels = root / LABELS
    rows = read_whitespace_table(INFO, labels, 2, "'MOS name'")
    index = DirIndex()
    paths, scores, refs = [], [], []
    for i, fields in enumerate(rows, start=1):
        scores.append(parse_float(INFO, labels, fields[0], f"line {i}"))
        name = fields[1]
        path = root / IMAGES / name
        paths.append(index.find(path) or path)
        ref = root / REFERENCES / (name[:3] + name[-4:]).upper()  # i01_01_1.bmp -> I01.BMP
        refs.append(index.find(ref) or ref)
    return make_samples(
        INFO, subset, root, paths, scores, check_files=check_files, extra={"reference_path": refs}
    )
