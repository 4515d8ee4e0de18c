"""PieAPP test set: 40 references x 15 distortions, per-image perceptual-error scores."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from quasar.errors import DatasetError

from ._common import (
    DatasetInfo,
    DirIndex,
    check_root,
    log,
    make_samples,
    parse_float,
    read_csv_columns,
    resolve_subset,
)
from .base import DatasetSamples

MERGED = "test_scores.csv"  # the reference's merged file (not part of the release)
LABEL_DIR = "labels/test"
LABEL_GLOB = "*_per_image_score.csv"
DIST = "distorted_images/test"
REFS = "reference_images/test"
NAME_COL = "distorted image"
SCORE_COL = "score for distorted image"
REF_COL = "reference image"

INFO = DatasetInfo(
    name="PieAPP",
    url="https://github.com/prashnani/PerceptualImageError/blob/master/dataset/dataset_README.md",
    role="target",
    subsets=("test",),
    default_subset="test",
    # Per-image MAP score of dissimilarity to the reference: higher means worse.
    score="perceptual error (0 = reference; higher is worse)",
    higher_is_better=False,
    layout=(
        f"{LABEL_DIR}/ref_<n>_per_image_score.csv (columns '{REF_COL}', '{NAME_COL}', "
        f"'{SCORE_COL}') or a merged {MERGED}",
        f"{DIST}/<reference stem>/<distorted image> (or flat {DIST}/<distorted image>)",
    ),
)


def _image(root: Path, index: DirIndex, name: str, ref_stem: Optional[str]) -> Path:
    candidates: List[Path] = []
    if ref_stem:
        candidates.append(root / DIST / ref_stem / name)
    candidates.append(root / DIST / name)
    if name.startswith("ref_"):  # the reference itself is scored too (score 0)
        candidates.append(root / REFS / name)
    return next((c for c in candidates if index.exists(c)), candidates[0])


def _is_reference_row(name: str, ref: Optional[str]) -> bool:
    """A label row that scores a reference image itself (the reference never embeds it)."""
    return (ref is not None and name == ref) or name.startswith("ref_")


def load(root, subset: Optional[str] = None, *, check_files: bool = True,
         include_references: bool = False) -> DatasetSamples:
    """Read the PieAPP test set.

    The reference reads a merged ``test_scores.csv`` at the root; the release has one
    ``ref_<n>_per_image_score.csv`` per reference in ``labels/test`` (read in name order when
    the merged file is absent). Header names are compared with surrounding spaces removed
    (the release writes ``" distorted image"``).

    As the reference (``extraction/datasets.py`` ``PieAPP.IMAGE_FOLDERS =
    ["distorted_images/test"]``), only distorted images are scored: a label row naming a
    reference image (``ref_*``, score 0) is left out unless ``include_references=True``,
    which then reads it from ``reference_images/test/``.
    """
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    if (root / MERGED).is_file():
        files = [root / MERGED]
    else:
        files = sorted((root / LABEL_DIR).glob(LABEL_GLOB))
        if not files:
            raise DatasetError(
                f"PieAPP: no label files: expected {root / LABEL_DIR / LABEL_GLOB} "
                f"(or a merged {root / MERGED}). {INFO.where()}."
            )
    index = DirIndex()
    paths, scores = [], []
    skipped = 0
    for path in files:
        cols = read_csv_columns(INFO, path, (NAME_COL, SCORE_COL), optional=(REF_COL,))
        file_ref = path.name[: -len(LABEL_GLOB) + 1] if path.name.endswith(LABEL_GLOB[1:]) else None
        refs = cols.get(REF_COL) or [None] * len(cols[NAME_COL])
        for i, (name, value, ref) in enumerate(zip(cols[NAME_COL], cols[SCORE_COL], refs), 2):
            if _is_reference_row(name, ref) and not include_references:
                skipped += 1
                continue
            stem = os.path.splitext(ref)[0] if ref else file_ref
            paths.append(_image(root, index, name, stem))
            scores.append(parse_float(INFO, path, value, f"row {i}"))
    if skipped:
        log.info("PieAPP: %d reference-image rows left out (include_references=True keeps "
                 "them)", skipped)
    return make_samples(INFO, subset, root, paths, scores, check_files=check_files,
                        extra={"reference_rows_skipped": skipped})
