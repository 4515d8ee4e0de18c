"""AVA (prompt data): 255k photos from DPChallenge with 1..10 vote counts (``AVA.txt``)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._common import (
    DatasetInfo,
    DirIndex,
    check_root,
    log,
    make_samples,
    malformed,
    missing_images_error,
    read_whitespace_table,
    resolve_subset,
)
from .base import DatasetSamples

LABELS = "AVA.txt"
IMAGES = "images"
MAX_LOGGED = 5

INFO = DatasetInfo(
    name="AVA",
    url="https://github.com/imfing/ava_downloader",
    role="prompt",
    subsets=("all",),
    default_subset="all",
    score="mean of the 1..10 votes",
    higher_is_better=True,
    layout=(
        f"{LABELS} (index, image id, vote counts c1..c10, tag 1, tag 2, challenge id)",
        f"{IMAGES}/<image id>.jpg",
    ),
)


def load(
    root,
    subset: Optional[str] = None,
    *,
    skip_missing: bool = True,
    check_files: bool = True,
) -> DatasetSamples:
    """Read AVA in the order of ``AVA.txt``; MOS = sum(i * c_i) / sum(c_i).

    Rows with no votes are skipped (their mean is undefined). Public copies of AVA lack a few
    images, so with ``skip_missing`` (default) rows whose image file is absent are skipped and
    counted in the log and in ``extra["skipped_missing"]``; with ``skip_missing=False`` a
    missing image is an error (unless ``check_files=False``).
    """
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    labels = root / LABELS
    rows = read_whitespace_table(INFO, labels, 12, "index, image id and 10 vote counts")
    ratings = np.arange(1, 11, dtype=np.float64)
    index = DirIndex()
    paths, scores, ids = [], [], []
    no_votes, missing = [], []
    for i, fields in enumerate(rows, start=1):
        try:
            counts = np.array([int(c) for c in fields[2:12]], dtype=np.float64)
        except ValueError:
            raise malformed(INFO, labels, f"line {i}: vote counts {fields[2:12]} are not integers") from None
        if (counts < 0).any():
            raise malformed(INFO, labels, f"line {i}: negative vote count")
        image_id = fields[1]
        total = counts.sum()
        if total == 0:
            no_votes.append(image_id)
            continue
        path = root / IMAGES / f"{image_id}.jpg"
        if skip_missing and not index.exists(path):
            missing.append(path)
            continue
        paths.append(path)
        scores.append(float(counts @ ratings / total))
        ids.append(image_id)
    if no_votes:
        log.warning("AVA: skipped %d rows with no votes (ids %s)", len(no_votes), no_votes[:MAX_LOGGED])
    if missing:
        log.warning(
            "AVA: skipped %d of %d rows whose image is missing (e.g. %s)",
            len(missing),
            len(rows),
            [p.name for p in missing[:MAX_LOGGED]],
        )
    if not paths and missing:
        raise missing_images_error(INFO, missing, len(rows))
    return make_samples(
        INFO,
        subset,
        root,
        paths,
        scores,
        check_files=check_files and not skip_missing,
        extra={
            "image_id": ids,
            "skipped_missing": len(missing),
            "skipped_no_votes": len(no_votes),
        },
    )
