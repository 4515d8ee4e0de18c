"""PIPAL training set (prompt data): 200 references and their distorted images with MOS."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from quasar.errors import DatasetError

from ._common import DatasetInfo, check_root, make_samples, malformed, parse_float, resolve_subset
from .base import DatasetSamples

LABELS = "Train_Label"
REFS = "Train_Ref"
DIST = "Train_Dist"

INFO = DatasetInfo(
    name="PIPAL",
    url="https://www.jasongt.com/projectpages/pipal.html",
    role="prompt",
    subsets=("train",),
    default_subset="train",
    score="MOS (Elo); NaN for reference images",
    higher_is_better=True,
    layout=(
        f"{LABELS}/*.txt (lines 'name,score'), {REFS}/<A0001.bmp>, {DIST}/<A0001_xx_xx.bmp> "
        "(all distorted images in one folder), directly under the root or under train/",
    ),
)


def reference_of(name: str) -> str:
    """Reference file of a distorted name: ``A0001_00_00.bmp`` -> ``A0001.bmp``."""
    stem, ext = os.path.splitext(name)
    return stem.split("_")[0] + ext


def _base(root: Path) -> Path:
    for base in (root, root / "train"):
        if (base / LABELS).is_dir():
            return base
    raise DatasetError(
        f"PIPAL: no {LABELS} folder in {root} or {root / 'train'}. Expected layout: "
        f"{INFO.layout[0]}. {INFO.where()}."
    )


def load(root, subset: Optional[str] = None, *, check_files: bool = True) -> DatasetSamples:
    """Read PIPAL's training part: references first, then distorted images, each sorted by name.

    That is the order in which the reference lists the image folders (``sorted(listdir)``)
    before forming anchors; ``extra["is_reference"]`` marks references and
    ``extra["group"]`` holds each image's reference stem (``A0001``), the group for the
    full-reference anchor split.
    """
    subset = resolve_subset(INFO, subset)
    base = _base(check_root(INFO, root))
    label_files = sorted((base / LABELS).glob("*.txt"))
    if not label_files:
        raise DatasetError(f"PIPAL: no *.txt label files in {base / LABELS}. {INFO.where()}.")
    dist: Dict[str, float] = {}
    for path in label_files:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for i, row in enumerate(csv.reader(fh), start=1):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < 2:
                    raise malformed(INFO, path, f"line {i} {row!r}: expected 'name,score'")
                dist[row[0].strip()] = parse_float(INFO, path, row[1], f"line {i}")
    refs = sorted({reference_of(n) for n in dist})
    dist_names = sorted(dist)
    paths = [base / REFS / n for n in refs] + [base / DIST / n for n in dist_names]
    scores = [np.nan] * len(refs) + [dist[n] for n in dist_names]
    is_ref = np.array([True] * len(refs) + [False] * len(dist_names))
    group = [os.path.splitext(n)[0] for n in refs] + [
        os.path.splitext(reference_of(n))[0] for n in dist_names
    ]
    return make_samples(
        INFO,
        subset,
        base,
        paths,
        scores,
        check_files=check_files,
        extra={"is_reference": is_ref, "group": group},
    )
