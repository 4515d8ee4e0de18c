"""Common shape of every dataset reader: (image path, score) pairs of one subset."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np


@dataclass(frozen=True)
class DatasetSamples:
    """Images of one dataset subset with their subjective scores.

    Attributes:
        name: dataset name as the paper writes it (``KonIQ10k``).
        subset: subset actually read (``test``, ``all``, ...).
        root: dataset root directory.
        paths: absolute image paths, in the reference's order.
        scores: float64 [N] (MOS, DMOS, z-score ... as the reference uses; for prompt data
            without scores, e.g. KADIS700k, NaN).
        higher_is_better: False for DMOS-like scores (signed SRCC then is negative).
        extra: per-dataset extras (e.g. ``{"is_reference": bool array}``).
    """

    name: str
    subset: str
    root: Path
    paths: List[Path]
    scores: np.ndarray
    higher_is_better: bool = True
    extra: Dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)
