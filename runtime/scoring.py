"""The QUASAR score: one pure function, used by the Scorer, evaluate and the benchmarks.

As the reference (``main.py``) computes it for an anchor pair (good, bad)::

    x = e / ||e||;  logits = LOGIT_SCALE * x @ anchors.T;  score = softmax(logits)[good]

with the fixed ``LOGIT_SCALE = 1 / 0.07`` (:mod:`quasar.constants`), in float64 (the
reference works in float32; the two agree to ~1e-7, and float64 keeps the scores of
near-identical images distinguishable). Anchors are unit rows (the bundle stores them so).
"""
from __future__ import annotations

import numpy as np

from quasar.constants import LOGIT_SCALE


def quasar_scores(embeddings: np.ndarray, anchors: np.ndarray,
                  logit_scale: float = LOGIT_SCALE) -> np.ndarray:
    """softmax(scale * cos(embedding, [good, bad]))[good] of every row of ``embeddings``
    ([N, D] raw, as the encoder returns them; ``anchors`` [2, D]) -> float64 [N]."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        logits = logit_scale * (x @ np.asarray(anchors, dtype=np.float64).T)  # [N, 2]
        # softmax over two = logistic of the difference: stable for any logit range
        return 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))
