"""Image anchors: embeddings of prompt data -> two L2-normalised centroids (good, bad).

NumPy + scikit-learn only (no torch): the embeddings come from the runtime; the anchors are
stored through the bundle layer (:func:`quasar.bundle.add_anchor_set`).

Index selection reproduces the QUASAR reference (``aggregation/fr.py``, ``aggregation/nr.py``)
draw for draw. The reference seeds the global streams once (``seed_everything(seed)``:
Python ``random``, NumPy's legacy global ``RandomState``, torch) and then

* full-reference split (KADIS700k, PIPAL): one ``np.random.permutation(n_references)``;
* median split, ``mean``: ``random.shuffle`` of the good list, then of the bad list;
* median split, ``clustering``: ``np.random.permutation`` of the good, then the bad indices;
* target folds (``main.py``): ``np.random.permutation(n_targets)``, after the anchors.

:class:`ReferenceRandom` holds those two streams explicitly, so the same seed selects the
same images and the same folds as the reference.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from quasar.bundle.anchors import l2_normalise
from quasar.errors import DatasetError

log = logging.getLogger(__name__)

FULL_REFERENCE = "full_reference"
MEDIAN = "median"
SPLITS = (FULL_REFERENCE, MEDIAN)
AGGREGATIONS = ("mean", "clustering")
# prompt data as the paper names it -> how it is split into good / bad
PROMPT_DATA_SPLIT = {"KADIS700k": FULL_REFERENCE, "PIPAL": FULL_REFERENCE, "AVA": MEDIAN}
# The reference leaves the number of k-means clusters to a config key it never sets
# (and its faiss code is commented out); 10 per side is our documented default.
DEFAULT_N_CLUSTERS = 10
DEFAULT_SEED = 42  # the reference's --seed default


class ReferenceRandom:
    """The reference's two seeded global streams, made explicit.

    ``np``: NumPy's legacy ``RandomState`` (what ``np.random.seed`` + ``np.random.permutation``
    use); ``py``: Python's ``random.Random`` (``random.seed`` + ``random.shuffle``).
    Pass one instance through anchor building and then the fold split, in that order.
    """

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self.seed = int(seed)
        self.np = np.random.RandomState(self.seed)
        self.py = random.Random(self.seed)
        self.draws: List[List[Any]] = []  # [stream, n] per draw, in order (see replay)

    def permutation(self, n: int) -> np.ndarray:
        """``np.random.permutation(n)`` of the NumPy stream, recorded."""
        self.draws.append(["np.permutation", int(n)])
        return self.np.permutation(int(n))

    def shuffle(self, items: list) -> None:
        """``random.shuffle(items)`` of the Python stream, recorded."""
        self.draws.append(["py.shuffle", len(items)])
        self.py.shuffle(items)

    def replay(self, draws: Sequence[Sequence[Any]]) -> None:
        """Repeat recorded draws (same streams, same sizes) so that both streams stand where
        they stood after them: a run with a stored anchor set then permutes its folds as the
        reference's run that built those anchors first. The sizes do not depend on the seed."""
        for kind, n in draws:
            if kind == "np.permutation":
                self.permutation(int(n))
            elif kind == "py.shuffle":
                self.shuffle(list(range(int(n))))
            else:
                raise ValueError(f"unknown recorded draw {kind!r}")


def _check_ratio(name: str, value, low_open: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v < 1.0)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {v}")
    return v


def _stem(p) -> str:
    return os.path.splitext(os.path.basename(str(p)))[0]


def split_full_reference(paths: Sequence, prompt_ratio: float = 1.0,
                         rng: Optional[ReferenceRandom] = None, *,
                         is_reference: Optional[Sequence[bool]] = None,
                         groups: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Good = reference images, bad = their distortions (KADIS700k, PIPAL).

    As the reference: a reference is a file whose stem has no ``_``; its distortions are the
    files whose stem starts with ``<reference>_``. A dataset reader may instead give
    ``is_reference`` and ``groups`` (each image's reference key), which also handles
    reference names containing ``_``; both rules agree wherever the stem rule works.
    ``prompt_ratio`` of the references are sampled (``round(n_ref * ratio)`` after one
    permutation of the references in path order) and all their distortions kept.
    Distortions whose reference is absent are ignored (the reference code would crash).
    Returns (good indices, bad indices) into ``paths``.
    """
    ratio = _check_ratio("prompt_ratio", prompt_ratio)
    rng = rng if rng is not None else ReferenceRandom()
    if (is_reference is None) != (groups is None):
        raise ValueError("give both is_reference and groups, or neither")
    if groups is not None:
        if len(groups) != len(paths) or len(is_reference) != len(paths):
            raise ValueError(f"is_reference/groups must have one entry per path ({len(paths)})")
        keys = [str(g) for g in groups]
        is_ref = [bool(r) for r in is_reference]
    else:
        stems = [_stem(p) for p in paths]
        is_ref = ["_" not in s for s in stems]
        keys = [s if r else s.split("_")[0] for s, r in zip(stems, is_ref)]
    ref_idx = [i for i, r in enumerate(is_ref) if r]
    if not ref_idx:
        raise DatasetError("full-reference split: no reference image (a file name without '_') "
                           "among the prompt images; check the dataset folder holds the "
                           "reference images next to the distorted ones")
    dists: Dict[str, List[int]] = {keys[i]: [] for i in ref_idx}
    orphans = 0
    for i, r in enumerate(is_ref):
        if not r:
            lst = dists.get(keys[i])
            if lst is None:
                orphans += 1
            else:
                lst.append(i)
    if orphans:
        log.warning("full-reference split: %d distorted images without their reference "
                    "image were ignored", orphans)
    ref_idx_arr = np.asarray(ref_idx, dtype=np.int64)
    limit = round(len(ref_idx_arr) * ratio)
    chosen = ref_idx_arr[rng.permutation(len(ref_idx_arr))][:limit]
    bad: List[int] = []
    for i in chosen:
        bad.extend(dists[keys[i]])
    if len(chosen) == 0 or not bad:
        raise DatasetError(f"full-reference split: {len(chosen)} references and {len(bad)} "
                           "distorted images selected; raise prompt_ratio or check that the "
                           "distorted files are named '<reference>_*'")
    return chosen, np.asarray(bad, dtype=np.int64)


def split_median(scores, prompt_ratio: float = 1.0, median_offset_ratio: Optional[float] = None,
                 aggregation_type: str = "mean", rng: Optional[ReferenceRandom] = None,
                 paths: Optional[Sequence] = None) -> Tuple[np.ndarray, np.ndarray, float]:
    """Good = score above the median, bad = the rest (AVA). Returns (good, bad, median).

    As the reference: the median is taken over unique paths (when ``paths`` is given);
    ``median_offset_ratio`` sorts each side away from the median and keeps the first
    ``n_good - int(n_good * offset)`` of *both* sides (the count comes from the good side,
    as in ``aggregation/nr.py``); then ``round(n * prompt_ratio)`` of each side are drawn —
    with ``random.shuffle`` for ``mean`` and ``np.random.permutation`` of the unsorted
    indices for ``clustering``. (The reference's clustering path ignores the offset; here
    it applies to both, identical when the offset is unset.)
    """
    ratio = _check_ratio("prompt_ratio", prompt_ratio)
    offset = None
    if median_offset_ratio is not None and float(median_offset_ratio) != 0:
        offset = _check_ratio("median_offset_ratio", median_offset_ratio, low_open=False)
    if aggregation_type not in AGGREGATIONS:
        raise ValueError(f"aggregation_type must be one of {AGGREGATIONS}, got {aggregation_type!r}")
    rng = rng if rng is not None else ReferenceRandom()
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise DatasetError("median split needs a finite score for every prompt image "
                           f"({int(np.sum(~np.isfinite(s)))} of {s.size} are missing)")
    if paths is not None:
        uniq = {str(p): float(v) for p, v in zip(paths, s)}
        median = float(np.median(list(uniq.values())))
    else:
        median = float(np.median(s))
    high = [i for i in range(s.size) if s[i] > median]
    low = [i for i in range(s.size) if not s[i] > median]

    if aggregation_type == "mean" or offset is not None:
        high_sorted = sorted(high, key=lambda i: s[i], reverse=True)  # stable, as the reference
        low_sorted = sorted(low, key=lambda i: s[i])
        if offset is not None:
            keep = len(high_sorted) - int(len(high_sorted) * offset)
            high_sorted, low_sorted = high_sorted[:keep], low_sorted[:keep]
        if aggregation_type == "mean":
            high, low = high_sorted, low_sorted
        else:  # clustering keeps the original order of the survivors
            kept_h, kept_l = set(high_sorted), set(low_sorted)
            high = [i for i in high if i in kept_h]
            low = [i for i in low if i in kept_l]

    if aggregation_type == "mean":
        high_lim, low_lim = round(len(high) * ratio), round(len(low) * ratio)
        rng.shuffle(high)
        good = high[:high_lim]
        rng.shuffle(low)
        bad = low[:low_lim]
    else:
        h = np.asarray(high, dtype=np.int64)
        lo = np.asarray(low, dtype=np.int64)
        good = h[rng.permutation(len(h))][:round(len(h) * ratio)]
        bad = lo[rng.permutation(len(lo))][:round(len(lo) * ratio)]
    good, bad = np.asarray(good, dtype=np.int64), np.asarray(bad, dtype=np.int64)
    if good.size == 0 or bad.size == 0:
        raise DatasetError(f"median split selected {good.size} good and {bad.size} bad images; "
                           "lower median_offset_ratio, raise prompt_ratio or use more images")
    return good, bad, median


def aggregate(embeddings: np.ndarray, aggregation_type: str = "mean",
              n_clusters: int = DEFAULT_N_CLUSTERS, seed: int = DEFAULT_SEED) -> Tuple[np.ndarray, int]:
    """One centroid [D] (float64) of raw embeddings, and the number of clusters used.

    ``mean``: the mean embedding. ``clustering``: scikit-learn k-means (k-means++, one
    init, ``random_state=seed``; ``n_clusters`` capped at the number of embeddings), each
    cluster's centroid = mean of its members, result = unweighted mean of the centroids —
    the reference's procedure with faiss swapped for scikit-learn.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"need a non-empty [N, D] array of embeddings, got shape {e.shape}")
    if aggregation_type == "mean":
        return e.mean(axis=0), 1
    if aggregation_type != "clustering":
        raise ValueError(f"aggregation_type must be one of {AGGREGATIONS}, got {aggregation_type!r}")
    if int(n_clusters) < 1:
        raise ValueError(f"n_clusters must be a positive integer, got {n_clusters}")
    from sklearn.cluster import KMeans

    k = min(int(n_clusters), e.shape[0])
    labels = KMeans(n_clusters=k, n_init=1, random_state=int(seed)).fit(e).labels_
    centroids = [e[labels == c].mean(axis=0) for c in np.unique(labels)]
    return np.mean(centroids, axis=0), len(centroids)


@dataclass(frozen=True)
class AnchorSet:
    """A [2, D] float32 anchor pair (row 0 good, row 1 bad, unit rows) and its recipe."""

    anchors: np.ndarray
    recipe: Dict[str, Any] = field(default_factory=dict)
    good_idx: Optional[np.ndarray] = None
    bad_idx: Optional[np.ndarray] = None


def build_anchor_set(embeddings: np.ndarray, paths: Sequence, scores=None, *,
                     prompt_data: str, split: Optional[str] = None,
                     aggregation_type: str = "mean", prompt_ratio: float = 1.0,
                     median_offset_ratio: Optional[float] = None,
                     n_clusters: int = DEFAULT_N_CLUSTERS, seed: int = DEFAULT_SEED,
                     rng: Optional[ReferenceRandom] = None,
                     is_reference: Optional[Sequence[bool]] = None,
                     groups: Optional[Sequence[str]] = None) -> AnchorSet:
    """Anchors from prompt-data embeddings [N, D] (raw, as the encoder returns them).

    ``split`` defaults from ``prompt_data`` (KADIS700k / PIPAL: full reference, AVA:
    median; ``is_reference`` / ``groups`` as in :func:`split_full_reference`). ``rng``
    defaults to a fresh :class:`ReferenceRandom` of ``seed``; pass your own to continue
    its streams afterwards (the fold split of ``quasar evaluate``).
    """
    split = split or PROMPT_DATA_SPLIT.get(prompt_data)
    if split not in SPLITS:
        raise ValueError(f"unknown prompt data {prompt_data!r}: use one of "
                         f"{sorted(PROMPT_DATA_SPLIT)} or pass split={SPLITS}")
    if aggregation_type not in AGGREGATIONS:
        raise ValueError(f"aggregation_type must be one of {AGGREGATIONS}, got {aggregation_type!r}")
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] != len(paths):
        raise ValueError(f"embeddings {emb.shape} do not match {len(paths)} paths")
    prompt_ratio = _check_ratio("prompt_ratio", prompt_ratio)
    rng = rng if rng is not None else ReferenceRandom(seed)
    first_draw = len(rng.draws)
    recipe: Dict[str, Any] = {
        "source": "images", "prompt_data": prompt_data, "split": split,
        "aggregation_type": aggregation_type, "prompt_ratio": float(prompt_ratio),
        "median_offset_ratio": None if median_offset_ratio is None else float(median_offset_ratio),
        "seed": int(rng.seed), "n_images": int(emb.shape[0]),
    }
    if split == FULL_REFERENCE:
        good, bad = split_full_reference(paths, prompt_ratio, rng, is_reference=is_reference,
                                         groups=groups)
    else:
        if scores is None:
            raise ValueError("the median split needs scores")
        good, bad, median = split_median(scores, prompt_ratio, median_offset_ratio,
                                         aggregation_type, rng, paths=paths)
        recipe["median"] = median
    g, kg = aggregate(emb[good], aggregation_type, n_clusters, rng.seed)
    b, kb = aggregate(emb[bad], aggregation_type, n_clusters, rng.seed)
    recipe.update(n_good=int(good.size), n_bad=int(bad.size),
                  rng_draws=[list(d) for d in rng.draws[first_draw:]])
    if aggregation_type == "clustering":
        recipe.update(n_clusters=int(n_clusters), n_clusters_good=kg, n_clusters_bad=kb,
                      kmeans="sklearn k-means++ n_init=1 random_state=seed")
    anchors = l2_normalise(np.stack([g, b])).astype(np.float32)
    return AnchorSet(anchors=anchors, recipe=recipe, good_idx=good, bad_idx=bad)


# The anchors file and adding a set to a bundle are the bundle layer's job.
from quasar.bundle.io import add_anchor_set  # noqa: E402,F401 (re-exported for callers)
