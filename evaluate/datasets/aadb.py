"""AADB: 10,000 Flickr photos with an overall aesthetics score in [0, 1] (label text files)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from quasar.errors import DatasetError

from ._common import (
    DatasetInfo,
    DirIndex,
    check_root,
    log,
    make_samples,
    parse_float,
    read_whitespace_table,
    resolve_subset,
)
from .base import DatasetSamples

LABEL_DIR = "imgListFiles_label"
IMAGES = "datasetImages_originalSize"
NEWTEST_IMAGES = "AADB_newtest_originalSize"
# split -> label files tried in order (the first one present is read)
SPLIT_FILES: Dict[str, Tuple[str, ...]] = {
    "train": ("imgListTrainRegression_score.txt",),
    "validation": ("imgListValidationRegression_score.txt",),
    "test": ("imgListTestNewRegression_score.txt", "imgListTestRegression_score.txt"),
}

INFO = DatasetInfo(
    name="AADB",
    url="https://github.com/aimerykong/deepImageAestheticsAnalysis",
    role="target",
    subsets=("all", "train", "validation", "test"),
    default_subset="all",
    score="overall aesthetics score (0..1)",
    higher_is_better=True,
    layout=(
        f"{LABEL_DIR}/imgListTrainRegression_score.txt, imgListValidationRegression_score.txt, "
        "imgListTestNewRegression_score.txt (lines 'name score')",
        f"{IMAGES}/<name> (test images also in {NEWTEST_IMAGES}/)",
    ),
)


def _read_split(root: Path, split: str) -> Optional[Tuple[Path, List[List[str]]]]:
    for fname in SPLIT_FILES[split]:
        path = root / LABEL_DIR / fname
        if path.is_file():
            return path, read_whitespace_table(INFO, path, 2, "'name score'")
    return None


def load(root, subset: Optional[str] = None, *, check_files: bool = True) -> DatasetSamples:
    """Read AADB; ``all`` (the reference's choice) is train, validation, test, each image once.

    ``test`` is the 1,000-image ``TestNew`` list most papers report on (the older
    ``imgListTestRegression_score.txt`` is read only when ``TestNew`` is absent).
    """
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    splits = ["train", "validation", "test"] if subset == "all" else [subset]
    index = DirIndex()
    seen: Dict[str, float] = {}
    paths, scores, split_of = [], [], []
    read_any = False
    duplicates = 0
    for split in splits:
        found = _read_split(root, split)
        if found is None:
            if subset != "all":
                raise DatasetError(
                    f"AADB: no label file for subset {split!r}: expected "
                    f"{' or '.join(str(root / LABEL_DIR / f) for f in SPLIT_FILES[split])}. "
                    f"{INFO.where()}."
                )
            continue
        read_any = True
        path, rows = found
        for i, fields in enumerate(rows, start=1):
            name, value = fields[0], parse_float(INFO, path, fields[1], f"line {i}")
            if name in seen:
                duplicates += 1
                continue
            seen[name] = value
            candidates = ([root / NEWTEST_IMAGES / name] if split == "test" else []) + [root / IMAGES / name]
            image = next((c for c in candidates if index.exists(c)), candidates[-1])
            paths.append(image)
            scores.append(value)
            split_of.append(split)
    if not read_any:
        raise DatasetError(
            f"AADB: no label files in {root / LABEL_DIR}; expected "
            f"{', '.join(f for files in SPLIT_FILES.values() for f in files[:1])}. {INFO.where()}."
        )
    if duplicates:
        log.info("AADB: %d names listed in more than one label file were kept once", duplicates)
    return make_samples(
        INFO, subset, root, paths, scores, check_files=check_files, extra={"split": split_of}
    )
