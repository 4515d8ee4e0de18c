"""LIVE In the Wild (CLIVE): 1,169 images, MOS 0..100 (MATLAB ``.mat`` label files)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from quasar.errors import DatasetError

from ._common import DatasetInfo, check_root, make_samples, malformed, require_file, resolve_subset
from .base import DatasetSamples

NAMES_FILE = "Data/AllImages_release.mat"
MOS_FILE = "Data/AllMOS_release.mat"
NAMES_VAR = "AllImages_release"
MOS_VAR = "AllMOS_release"
IMAGES = "Images"
TRAINING = "Images/trainingImages"
N_TRAIN = 7  # the first 7 names are the training images, kept in their own folder

INFO = DatasetInfo(
    name="LIVEitW",
    url="https://live.ece.utexas.edu/research/ChallengeDB/index.html",
    role="target",
    subsets=("test", "train", "all"),
    default_subset="test",
    score="MOS (0..100)",
    higher_is_better=True,
    layout=(
        f"{NAMES_FILE} (cell array {NAMES_VAR})",
        f"{MOS_FILE} (row vector {MOS_VAR})",
        f"{IMAGES}/<name> and, for the first {N_TRAIN} names, {TRAINING}/<name>",
    ),
)


def _loadmat(path: Path, var: str):
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy is in the evaluate extra
        raise DatasetError(
            "LIVEitW labels are MATLAB files; install scipy (pip install 'quasar-iqa[evaluate]')."
        ) from None
    require_file(INFO, path, "label file")
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a corrupt file
        raise malformed(INFO, path, f"not a readable MATLAB file ({exc})") from None
    if var not in mat:
        found = [k for k in mat if not k.startswith("__")]
        raise malformed(INFO, path, f"no variable {var!r}; found {found}")
    return mat[var]


def _cell_strings(path: Path, cell) -> List[str]:
    """Strings of a MATLAB cell array as loadmat returns it (object array of 1-element arrays)."""
    out = []
    for item in np.asarray(cell, dtype=object).ravel():
        value = item
        while isinstance(value, np.ndarray):
            if value.size != 1:
                raise malformed(INFO, path, f"expected a cell array of file names, found {value!r}")
            value = value.ravel()[0]
        if not isinstance(value, str):
            raise malformed(INFO, path, f"expected file names, found {value!r}")
        out.append(value.strip())
    return out


def load(root, subset: Optional[str] = None, *, check_files: bool = True) -> DatasetSamples:
    """Read LIVE-itW; ``test`` (default) leaves out the 7 training images, as the reference."""
    subset = resolve_subset(INFO, subset)
    root = check_root(INFO, root)
    names = _cell_strings(root / NAMES_FILE, _loadmat(root / NAMES_FILE, NAMES_VAR))
    raw_mos = _loadmat(root / MOS_FILE, MOS_VAR)
    try:
        mos = np.asarray(raw_mos, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise malformed(INFO, root / MOS_FILE, f"{MOS_VAR} is not numeric") from None
    if len(mos) != len(names):
        raise malformed(
            INFO,
            root / MOS_FILE,
            f"{len(mos)} scores for {len(names)} names in {root / NAMES_FILE}",
        )
    if len(names) <= N_TRAIN:
        raise malformed(INFO, root / NAMES_FILE, f"only {len(names)} names, expected > {N_TRAIN}")
    paths = [root / TRAINING / n for n in names[:N_TRAIN]] + [root / IMAGES / n for n in names[N_TRAIN:]]
    take = {"train": slice(0, N_TRAIN), "test": slice(N_TRAIN, None), "all": slice(None)}[subset]
    return make_samples(INFO, subset, root, paths[take], mos[take], check_files=check_files)
