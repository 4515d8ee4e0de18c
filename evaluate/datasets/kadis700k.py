"""KADIS-700k (prompt data): 140k pristine images and their generated distortions, no scores."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from quasar.errors import DatasetError

from ._common import DatasetInfo, DirIndex, check_root, make_samples, require_dir, resolve_subset
from .base import DatasetSamples

REFS = "ref_imgs"
DIST = "dist_imgs"

INFO = DatasetInfo(
    name="KADIS700k",
    url="http://database.mmsp-kn.de/kadis-700k-database.html",
    role="prompt",
    subsets=("all",),
    default_subset="all",
    score="none (NaN)",
    higher_is_better=True,
    layout=(
        f"{REFS}/<name>.png (pristine images)",
        f"{DIST}/<name>_<type>_<level>.bmp (generated with the release's MATLAB script)",
    ),
)


def reference_of(name: str) -> str:
    """Reference stem of a distorted name: ``a-plant-1464418_07_03.bmp`` -> ``a-plant-1464418``."""
    stem = os.path.splitext(name)[0]
    parts = stem.rsplit("_", 2)
    return parts[0] if len(parts) == 3 else stem


def load(root, subset: Optional[str] = None, *, check_files: bool = True) -> DatasetSamples:
    """List KADIS-700k: ``ref_imgs`` then ``dist_imgs``, each sorted by name (the reference's order).

    Only image files are listed (hidden files and other extensions are left out). Scores are
    NaN; ``extra["is_reference"]`` marks references and ``extra["group"]`` holds each image's
    reference stem, the group for the full-reference anchor split.
    """
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    index = DirIndex()
    refs = index.images(require_dir(INFO, root / REFS, "reference folder"))
    dist = index.images(require_dir(INFO, root / DIST, "distorted-image folder"))
    if not dist:
        raise DatasetError(
            f"KADIS700k: {root / DIST} holds no images. The release ships only the pristine "
            "images; generate the distorted ones with its MATLAB script "
            f"(kadis700k_ref_imgs.csv lists them). {INFO.where()}."
        )
    paths = [root / REFS / n for n in refs] + [root / DIST / n for n in dist]
    group = [os.path.splitext(n)[0] for n in refs] + [reference_of(n) for n in dist]
    is_ref = np.array([True] * len(refs) + [False] * len(dist))
    return make_samples(
        INFO,
        subset,
        root,
        paths,
        [np.nan] * len(paths),
        check_files=False,  # listed from the folders themselves
        extra={"is_reference": is_ref, "group": group},
    )
