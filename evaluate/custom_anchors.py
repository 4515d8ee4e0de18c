"""Anchors from the user's own images: ``quasar anchors BUNDLE --good ... --bad ...`` or
``--scores FILE --split median|quantile``.

QUASAR needs no training: its anchors are the centroids of embeddings of good and bad images.
The paper takes them from KADIS-700k / PIPAL (references vs distortions) and AVA (above vs
below the median score). Here the images are the user's:

* ``lists``: ``good`` and ``bad`` are folders (walked recursively, image extensions only),
  ``@list.txt`` files (one path per line) or lists of paths;
* ``median``: a score file (any CSV / JSONL / Parquet with a path and a score column, e.g.
  ratings, or a previous ``quasar score`` output); good = above the median, bad = the rest,
  with the paper's ``median_offset_ratio`` (keep the images farthest from the median);
  this is the reference's AVA split (:func:`split_median`), draw for draw;
* ``quantile Q``: good = score >= the (1-Q) quantile, bad = score <= the Q quantile.

Then ``prompt_ratio`` of each side is drawn (the reference's streams: ``random.shuffle`` for
``mean``, ``np.random.permutation`` for ``clustering``) and each side aggregated to one
centroid (mean, or the mean of k-means centroids), L2-normalised, and stored in the bundle as
a named anchor set, atomically, with its recipe and the sha256 of the image list
(``list_sha256``: ``<label>\\t<path>\\n`` per input in input order; label ``good``/``bad`` or
the score's ``repr``). Use it with ``quasar score --anchors NAME``.

With scores, a held-out fraction (``holdout``, default 0.2) is kept out of the anchors and the
SRCC of the new anchors' scores against the given scores on it is reported (a signed
correlation; the stored anchors are those evaluated). With ``folds=K`` the SRCC is estimated
by K-fold cross-validation instead and the stored anchors use every image.

Random streams, all from ``seed``: the hold-out (or fold) permutation is
``np.random.RandomState(seed).permutation(n)`` (the first ``round(n * holdout)`` are held out;
the rest stay in input order); each anchor build then uses a fresh
:class:`ReferenceRandom(seed)`.

Every check (paths exist, scores numeric, enough images on each side, name free) runs before
the model is loaded; the bundle is written only at the end and atomically, so an error leaves
it byte for byte unchanged.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from quasar.errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("lists", "median", "quantile")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # as the bundle's anchor-set names
DEFAULT_HOLDOUT = 0.2
MIN_PER_SIDE = 2
Spec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _anchor_math():
    """The shared anchor math (evaluate/anchors.py) and the bundle layer's writer, as one
    namespace: NumPy + scikit-learn code, never torch."""
    import types

    from quasar.bundle.anchors import l2_normalise
    from quasar.bundle.io import add_anchor_set

    from .anchors import AGGREGATIONS, ReferenceRandom, aggregate, split_median

    return types.SimpleNamespace(AGGREGATIONS=AGGREGATIONS, ReferenceRandom=ReferenceRandom,
                                 aggregate=aggregate, split_median=split_median,
                                 l2_normalise=l2_normalise, add_anchor_set=add_anchor_set)


# --------------------------------------------------------------------------- inputs

def collect_images(spec: Spec, what: str) -> List[str]:
    """Image paths of a ``--good`` / ``--bad`` spec: a folder, ``@list.txt``, a file, or a
    list of those. Missing files are an error naming them."""
    from quasar.errors import InputError
    from quasar.runtime.inputs import iter_inputs

    specs = [os.fspath(s) for s in ([spec] if isinstance(spec, (str, os.PathLike)) else spec)]
    if not specs:
        raise DatasetError(f"--{what}: no images given; pass a folder, @list.txt or image files")
    for s in specs:
        if s.startswith("@") and not os.path.exists(s) and not os.path.isfile(s[1:]):
            raise DatasetError(f"--{what} {s}: the list file {s[1:]} does not exist")
        if not s.startswith("@") and not os.path.exists(s):
            raise DatasetError(f"--{what} {s}: no such file or folder")
    try:
        paths = list(iter_inputs(specs))
    except InputError as exc:
        raise DatasetError(f"--{what}: {exc}") from exc
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"--{what}: {len(missing)} of {len(paths)} listed images do not exist "
                           f"(first: {missing[:3]}); fix the list or remove those lines")
    if not paths:
        raise DatasetError(f"--{what} {' '.join(specs)}: no images found (folders are searched "
                           "recursively for image file extensions)")
    return paths


def resolve_paths(paths: Sequence[str], score_file: str, root=None) -> List[str]:
    """Paths of a score file, made usable: absolute paths as they are; relative ones against
    ``root`` when given, else the current folder, else the score file's folder."""
    base = Path(score_file).resolve().parent
    out, missing = [], []
    for p in paths:
        cands = [Path(p)] if os.path.isabs(p) else (
            [Path(root) / p] if root is not None else [Path(p), base / p])
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            missing.append(p)
        out.append(str(hit) if hit is not None else p)
    if missing:
        where = f"--root {root}" if root is not None else f"the current folder or {base}"
        raise DatasetError(f"{score_file}: {len(missing)} of {len(paths)} images do not exist "
                           f"(first: {missing[:3]}, relative paths are looked up in {where}); "
                           "fix the paths or pass --root DIR")
    return out


def _file_id(p: str):
    """What makes two names one file: (device, inode), else the real path."""
    try:
        st = os.stat(p)
        return ("ino", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(p))


def shared_files(a: Sequence[str], b: Sequence[str]) -> List[Tuple[str, str]]:
    """``(path in a, path in b)`` for every file that ``a`` and ``b`` both reach, whatever
    the names: the same (device, inode) - a symlinked folder, a hard link, ``..`` - or the
    same real path."""
    first = {}
    for p in a:
        first.setdefault(_file_id(p), p)
    return [(first[_file_id(p)], p) for p in b if _file_id(p) in first]


def _repeated_files(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """``(first name, later name)`` of every file that ``paths`` list more than once."""
    first, out = {}, []
    for p in paths:
        k = _file_id(p)
        if k in first:
            out.append((first[k], p))
        else:
            first[k] = p
    return out


def list_sha256(labels: Sequence[str], paths: Sequence[str]) -> str:
    """sha256 of ``<label>\\t<path>\\n`` for every input, in input order."""
    h = hashlib.sha256()
    for lab, p in zip(labels, paths):
        h.update(f"{lab}\t{p}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# --------------------------------------------------------------------------- selection

def _sample_side(idx: Sequence[int], ratio: float, aggregation_type: str, rng) -> np.ndarray:
    """``round(n * ratio)`` of ``idx`` drawn as the reference's median split draws a side."""
    idx = list(idx)
    lim = round(len(idx) * ratio)
    if aggregation_type == "mean":
        rng.py.shuffle(idx)
        return np.asarray(idx[:lim], dtype=np.int64)
    a = np.asarray(idx, dtype=np.int64)
    return a[rng.np.permutation(len(a))][:lim]


def split_quantile(scores, q: float, prompt_ratio: float, aggregation_type: str, rng
                   ) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float]]:
    """Good = score >= quantile(1-q), bad = score <= quantile(q) (NumPy's linear quantile),
    each in input order, then ``prompt_ratio`` of each side drawn (good first)."""
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = float(np.quantile(s, q)), float(np.quantile(s, 1.0 - q))
    if not lo < hi:
        raise DatasetError(f"quantile split {q}: the {q} and {1 - q} quantiles are equal ({lo}); "
                           "too many tied scores - use a smaller quantile or --split median")
    good = [i for i in range(s.size) if s[i] >= hi]
    bad = [i for i in range(s.size) if s[i] <= lo]
    g = _sample_side(good, prompt_ratio, aggregation_type, rng)
    b = _sample_side(bad, prompt_ratio, aggregation_type, rng)
    return g, b, (lo, hi)


@dataclass(frozen=True)
class AnchorRecipe:
    """How to turn (embeddings, labels or scores) into an anchor pair."""

    split: str = "median"
    quantile: float = 0.25
    prompt_ratio: float = 1.0
    median_offset_ratio: Optional[float] = None
    aggregation_type: str = "mean"
    n_clusters: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        m = _anchor_math()
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.aggregation_type not in m.AGGREGATIONS:
            raise ValueError(f"aggregation_type must be one of {m.AGGREGATIONS}, "
                             f"got {self.aggregation_type!r}")
        if not 0.0 < float(self.prompt_ratio) <= 1.0:
            raise ValueError(f"prompt_ratio must be in (0, 1], got {self.prompt_ratio}")
        if self.median_offset_ratio is not None:
            if self.split != "median":
                raise ValueError("median_offset_ratio applies to --split median only "
                                 "(the quantile split already keeps the extremes)")
            if not 0.0 <= float(self.median_offset_ratio) < 1.0:
                raise ValueError(f"median_offset_ratio must be in [0, 1), got "
                                 f"{self.median_offset_ratio}")
        if self.split == "quantile" and not 0.0 < float(self.quantile) < 0.5:
            raise ValueError(f"quantile must be in (0, 0.5), got {self.quantile} (0.25: good = "
                             "top quarter, bad = bottom quarter)")
        if int(self.n_clusters) < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {self.n_clusters}")

    def select(self, labels_or_scores, rng) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
        """(good indices, bad indices, extra recipe entries). ``labels_or_scores``: booleans
        (True = good) for ``lists``, scores otherwise."""
        m = _anchor_math()
        extra: Dict[str, Any] = {}
        if self.split == "lists":
            lab = np.asarray(labels_or_scores, dtype=bool)
            good = _sample_side(np.flatnonzero(lab), self.prompt_ratio, self.aggregation_type, rng)
            bad = _sample_side(np.flatnonzero(~lab), self.prompt_ratio, self.aggregation_type, rng)
        elif self.split == "median":
            good, bad, median = m.split_median(labels_or_scores, self.prompt_ratio,
                                               self.median_offset_ratio, self.aggregation_type, rng)
            extra["median"] = median
        else:
            good, bad, (lo, hi) = split_quantile(labels_or_scores, float(self.quantile),
                                                 self.prompt_ratio, self.aggregation_type, rng)
            extra.update(quantile_low=lo, quantile_high=hi)
        return good, bad, extra

    def build(self, embeddings: np.ndarray, labels_or_scores, what: str = "anchors"
              ) -> Tuple[np.ndarray, Dict[str, Any], np.ndarray, np.ndarray]:
        """Anchors float32 [2, D] (unit rows: good, bad), recipe entries, good and bad indices
        (into ``embeddings``), with a fresh ReferenceRandom(seed)."""
        m = _anchor_math()
        rng = m.ReferenceRandom(self.seed)
        good, bad, extra = self.select(labels_or_scores, rng)
        for side, idx in (("good", good), ("bad", bad)):
            if idx.size < MIN_PER_SIDE:
                raise DatasetError(
                    f"{what}: the {self.split} split leaves {idx.size} {side} image(s) (need at "
                    f"least {MIN_PER_SIDE} on each side); give more {side} images, raise "
                    "prompt_ratio or lower median_offset_ratio / raise the quantile")
        e = np.asarray(embeddings, dtype=np.float64)
        g, kg = m.aggregate(e[good], self.aggregation_type, self.n_clusters, self.seed)
        b, kb = m.aggregate(e[bad], self.aggregation_type, self.n_clusters, self.seed)
        extra.update(n_good=int(good.size), n_bad=int(bad.size))
        if self.aggregation_type == "clustering":
            extra.update(n_clusters_good=kg, n_clusters_bad=kb,
                         kmeans="sklearn k-means++ n_init=1 random_state=seed")
        anchors = m.l2_normalise(np.stack([g, b])).astype(np.float32)
        return anchors, extra, good, bad

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"split": self.split, "prompt_ratio": float(self.prompt_ratio),
                             "aggregation_type": self.aggregation_type, "seed": int(self.seed)}
        if self.split == "quantile":
            d["quantile"] = float(self.quantile)
        if self.split == "median":
            d["median_offset_ratio"] = (None if self.median_offset_ratio is None
                                        else float(self.median_offset_ratio))
        if self.aggregation_type == "clustering":
            d["n_clusters"] = int(self.n_clusters)
        return d


# --------------------------------------------------------------------------- evaluation

def holdout_indices(n: int, holdout: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: ``RandomState(seed).permutation(n)``, the first
    ``round(n * holdout)`` held out; both returned in input order."""
    perm = np.random.RandomState(int(seed)).permutation(n)
    k = round(n * float(holdout))
    return np.sort(perm[k:]), np.sort(perm[:k])


def _srcc(pred, target) -> float:
    from .metrics import srcc

    return srcc(pred, target)


def _scores(embeddings, anchors) -> np.ndarray:
    from quasar.runtime.scoring import quasar_scores

    return quasar_scores(embeddings, anchors)


@dataclass
class CustomAnchors:
    """Result of :func:`build_custom_anchors`."""

    anchors: np.ndarray                 # float32 [2, D]
    recipe: Dict[str, Any]
    good_idx: np.ndarray                # into the inputs
    bad_idx: np.ndarray
    test_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    holdout_srcc: Optional[float] = None
    fold_srcc: List[float] = field(default_factory=list)


def build_custom_anchors(embeddings: np.ndarray, labels_or_scores, recipe: AnchorRecipe, *,
                         holdout: float = 0.0, folds: Optional[int] = None) -> CustomAnchors:
    """Anchors from embeddings [N, D] of the inputs and their labels (``lists``: True = good)
    or scores. With scores, ``holdout`` > 0 keeps that fraction out and reports its SRCC;
    ``folds`` K >= 2 reports K-fold SRCC and builds the final anchors on all inputs."""
    e = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels_or_scores)
    n = e.shape[0]
    if e.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"embeddings {e.shape} and labels/scores {y.shape} do not match")
    if recipe.split != "lists":
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise DatasetError(f"{int(np.sum(~np.isfinite(y)))} of {n} images have no score; "
                               "every image needs a numeric score")
    out_recipe: Dict[str, Any] = {}
    if recipe.split != "lists" and folds:
        from .metrics import kfold_indices

        k = int(folds)
        if k < 2:
            raise ValueError(f"folds must be at least 2, got {k}")
        fold_srcc = []
        for i, test in enumerate(kfold_indices(n, k, np.random.RandomState(recipe.seed))):
            train = np.setdiff1d(np.arange(n), test)
            a, _, _, _ = recipe.build(e[train], y[train], what=f"fold {i + 1} of {k}")
            fold_srcc.append(_srcc(_scores(e[test], a), y[test]))
        anchors, extra, good, bad = recipe.build(e, y)
        out_recipe.update(folds=k, fold_srcc=fold_srcc, cv_srcc_mean=float(np.nanmean(fold_srcc)),
                          cv_srcc_std=float(np.nanstd(fold_srcc)))
        return CustomAnchors(anchors, {**extra, **out_recipe}, good, bad, fold_srcc=fold_srcc)
    if recipe.split != "lists" and holdout > 0:
        if not 0.0 < float(holdout) < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {holdout}")
        train, test = holdout_indices(n, holdout, recipe.seed)
        if test.size < 3:
            raise DatasetError(f"holdout {holdout} of {n} images leaves {test.size} to test (need "
                               "3); use more images, a larger --holdout, or --holdout 0")
        anchors, extra, good, bad = recipe.build(e[train], y[train])
        s = _srcc(_scores(e[test], anchors), y[test])
        out_recipe.update(holdout=float(holdout), n_holdout=int(test.size), holdout_srcc=s)
        return CustomAnchors(anchors, {**extra, **out_recipe}, train[good], train[bad], test, s)
    anchors, extra, good, bad = recipe.build(e, y)
    if recipe.split != "lists":
        out_recipe["holdout"] = 0.0
    return CustomAnchors(anchors, {**extra, **out_recipe}, good, bad)


# --------------------------------------------------------------------------- end to end

def prepare_inputs(*, good: Optional[Spec] = None, bad: Optional[Spec] = None,
                   scores: Optional[str] = None, score_column: Optional[str] = None,
                   path_column: Optional[str] = None, root=None, split: Optional[str] = None
                   ) -> Tuple[List[str], np.ndarray, List[str], Dict[str, Any]]:
    """(paths, labels or scores, hash labels, recipe entries) of the user's inputs, checked."""
    if scores is not None:
        if good is not None or bad is not None:
            raise DatasetError("give --good/--bad lists or --scores FILE, not both")
        from .score_table import read_score_table

        t = read_score_table(scores, path_column=path_column,
                             score_columns=None if score_column is None else [score_column])
        if len(t.scores) != 1:
            raise DatasetError(f"{scores}: several score columns {list(t.columns.values())}; "
                               "choose one with --score-column")
        (name, vals), = t.scores.items()
        col = t.columns[name]
        keep = ~t.failed
        if not keep.all():
            log.warning("%s: %d rows whose status is not ok were skipped", scores,
                        int((~keep).sum()))
        bad_rows = [i for i in np.flatnonzero(keep) if not math.isfinite(vals[i])]
        if bad_rows:
            raise DatasetError(f"{scores}: {len(bad_rows)} rows have no score in column {col!r} "
                               f"(first row {bad_rows[0] + 1}: {t.paths[bad_rows[0]]}); fill them "
                               "in, drop those rows, or choose another --score-column")
        rel = [t.paths[i] for i in np.flatnonzero(keep)]
        y = vals[keep]
        paths = resolve_paths(rel, scores, root)
        twice = _repeated_files(paths)
        if twice:
            raise DatasetError(f"{scores}: {len(twice)} images are listed more than once (the "
                               "same file under one name, or reached by two - a link; first: "
                               f"{twice[0][0]} = {twice[0][1]}); keep one row (one score) per "
                               "image")
        labels = [repr(float(v)) for v in y]
        return paths, y, labels, {"scores_file": os.path.basename(scores), "score_column": col,
                                  "split": split or "median"}
    if good is None or bad is None:
        raise DatasetError("custom anchors need --good and --bad (folders, @list.txt or files), "
                           "or --scores FILE with --split median|quantile")
    g, b = collect_images(good, "good"), collect_images(bad, "bad")
    both = shared_files(g, b)
    if both:
        first = "; ".join(f"{x} = {y}" for x, y in both[:3])
        raise DatasetError(f"{len(both)} images are in both --good and --bad, as the same file "
                           f"reached by two names (a symlinked folder, a hard link or the same "
                           f"path; first: {first}); each image goes on one side - check that "
                           "--good and --bad are different folders")
    for side, lst in (("good", g), ("bad", b)):
        if len(lst) < MIN_PER_SIDE:
            raise DatasetError(f"--{side}: {len(lst)} image(s); need at least {MIN_PER_SIDE} on "
                               "each side (more make better anchors)")
    paths = g + b
    y = np.array([True] * len(g) + [False] * len(b))
    return paths, y, ["good"] * len(g) + ["bad"] * len(b), {"split": "lists"}


def make_custom_anchors(bundle, name: str, *, good: Optional[Spec] = None,
                        bad: Optional[Spec] = None, scores: Optional[str] = None,
                        score_column: Optional[str] = None, path_column: Optional[str] = None,
                        root=None, split: Optional[str] = None, quantile: float = 0.25,
                        prompt_ratio: float = 1.0, median_offset_ratio: Optional[float] = None,
                        aggregation_type: str = "mean", n_clusters: int = 10, seed: int = 42,
                        holdout: Optional[float] = None, folds: Optional[int] = None,
                        skip_failed: bool = False, overwrite: bool = False,
                        resolution: Optional[str] = None, device: str = "auto",
                        batch_size: int = 16, threads: Optional[int] = None,
                        embed: Optional[Callable[[List[str]], Any]] = None) -> CustomAnchors:
    """Build custom anchors from the user's images and add them to ``bundle`` as ``name``.

    ``embed(paths)`` (default: the bundle's runtime Scorer, ``errors="collect"``) returns a
    ScoreResult-like object with ``values`` [N, D] and ``errors``. Returns the
    :class:`CustomAnchors` (its ``good_idx`` etc. index the inputs in order)."""
    m = _anchor_math()
    if not name or not _NAME_RE.match(str(name)):
        raise ValueError(f"anchor set name {name!r}: give --name with letters, digits, '_', '-', '.'")
    if split is None:
        split = "median" if scores is not None else "lists"
    if (scores is None) != (split == "lists"):
        raise ValueError("--split median|quantile goes with --scores; --good/--bad lists need no "
                         "split")
    recipe = AnchorRecipe(split=split, quantile=float(quantile), prompt_ratio=float(prompt_ratio),
                          median_offset_ratio=None if median_offset_ratio is None
                          else float(median_offset_ratio),
                          aggregation_type=aggregation_type, n_clusters=int(n_clusters),
                          seed=int(seed))
    if holdout is None:
        holdout = DEFAULT_HOLDOUT if scores is not None and not folds else 0.0
    paths, y, labels, info = prepare_inputs(good=good, bad=bad, scores=scores,
                                            score_column=score_column, path_column=path_column,
                                            root=root, split=split)
    digest = list_sha256(labels, paths)
    scorer = None
    if embed is None:
        from quasar.runtime.scorer import Scorer

        scorer = Scorer.from_bundle(bundle, anchors="all", resolution=resolution, device=device,
                                    batch_size=batch_size, threads=threads)
        existing = scorer.bundle.anchor_names
        embed = lambda p: scorer.embed(p, errors="collect")  # noqa: E731
    else:
        from quasar.bundle.io import load_bundle

        existing = load_bundle(bundle, verify=True).anchor_names
    from quasar.bundle.io import check_anchor_name_free

    check_anchor_name_free(bundle, name, existing, overwrite)  # before any image is embedded
    res = embed(paths)
    emb, errs = np.asarray(res.values), list(res.errors)
    failed = [i for i, e in enumerate(errs) if e is not None]
    if failed and not skip_failed:
        first = "; ".join(str(errs[i]) for i in failed[:3])
        raise DatasetError(f"{len(failed)} of {len(paths)} images could not be embedded ({first}); "
                           "fix or remove them, or pass --skip-failed to leave them out")
    keep = np.array([e is None for e in errs], dtype=bool)
    idx = np.flatnonzero(keep)
    out = build_custom_anchors(emb[keep], y[keep], recipe, holdout=float(holdout), folds=folds)
    out.good_idx, out.bad_idx, out.test_idx = idx[out.good_idx], idx[out.bad_idx], idx[out.test_idx]
    full = {"source": "custom images", **info, **recipe.to_dict(), **out.recipe,
            "n_images": len(paths), "n_failed": len(failed), "list_sha256": digest,
            "embeddings": "quasar runtime"}
    if scorer is not None:
        full.update(model=scorer.manifest.model, resolution=scorer.resolution)
    out.recipe = full
    _refuse_identical_sides(out.anchors)
    m.add_anchor_set(Path(bundle), name, out.anchors, full, overwrite=overwrite)
    return out


def _refuse_identical_sides(anchors: np.ndarray) -> None:
    """Good and bad anchors that coincide make every score exactly 0.5: the two sides held
    the same pictures (copies under other names). Refused rather than stored."""
    a = np.asarray(anchors, dtype=np.float64)
    if float(a[0] @ a[1]) > 1.0 - 1e-6:
        raise DatasetError("the good and bad anchors are the same (cosine 1): --good and --bad "
                           "hold the same pictures (copies under other names?), so every score "
                           "would be exactly 0.5; give each side different images")


def summary(name: str, bundle, res: CustomAnchors) -> str:
    """The lines ``quasar anchors`` prints for custom anchors."""
    r = res.recipe
    lines = [f"added anchor set {name!r} to {bundle}: {r['split']} split, {r['n_good']} good / "
             f"{r['n_bad']} bad images, {r['aggregation_type']}, seed {r['seed']}, "
             f"list sha256 {r['list_sha256'][:16]}..."]
    if r.get("n_failed"):
        lines.append(f"left out {r['n_failed']} images that could not be embedded")
    if "holdout_srcc" in r:
        lines.append(f"held-out SRCC (signed) on {r['n_holdout']} images: {r['holdout_srcc']:.4f}")
    if "fold_srcc" in r:
        lines.append(f"{r['folds']}-fold SRCC (signed): {r['cv_srcc_mean']:.4f} ± "
                     f"{r['cv_srcc_std']:.4f} (anchors stored: built on all images)")
    lines.append(f"use it: quasar score IMAGES --bundle {bundle} --anchors {name}")
    return "\n".join(lines)


__all__ = ["AnchorRecipe", "CustomAnchors", "build_custom_anchors", "make_custom_anchors",
           "collect_images", "split_quantile", "holdout_indices", "list_sha256", "summary"]


def parse_split(split, quantile) -> Tuple[Optional[str], float]:
    """``median`` | ``quantile`` (with ``quantile``) | ``quantile:Q`` / ``quantile=Q`` /
    ``"quantile Q"`` -> (split, Q)."""
    if split is None:
        return None, float(quantile)
    s = str(split).strip().lower()
    for sep in (":", "=", " "):
        if sep in s:
            head, _, q = s.partition(sep)
            if head.strip() != "quantile":
                break
            try:
                return "quantile", float(q)
            except ValueError:
                raise ValueError(f"--split {split!r}: the quantile must be a number, e.g. "
                                 "quantile:0.25") from None
    if s not in SPLITS:
        raise ValueError(f"--split must be median or quantile (quantile:Q, e.g. quantile:0.25), "
                         f"got {split!r}")
    return s, float(quantile)


def anchors_command(bundle, *, name, good=None, bad=None, scores=None, split=None,
                    quantile=0.25, score_column=None, path_column=None, root=None,
                    holdout=None, folds=None, skip_failed=False, overwrite=False,
                    aggregation_type="mean", prompt_ratio=1.0, median_offset_ratio=None,
                    n_clusters=10, seed=42, resolution=None, device="auto", batch_size=16,
                    threads=None, quiet=False) -> CustomAnchors:
    """``quasar anchors BUNDLE --good ... --bad ...`` / ``--scores FILE`` (values already
    parsed by the CLI layer, ``None`` for flags not given)."""
    if name is None:
        raise ValueError("custom anchors need --name NAME (the anchor set to add; then "
                         "quasar score --anchors NAME)")
    sp, q = parse_split(split, 0.25 if quantile is None else quantile)
    res = make_custom_anchors(
        bundle, str(name), good=good, bad=bad, scores=None if scores is None else str(scores),
        score_column=score_column, path_column=path_column, root=root, split=sp, quantile=q,
        prompt_ratio=prompt_ratio, median_offset_ratio=median_offset_ratio,
        aggregation_type=aggregation_type, n_clusters=n_clusters, seed=seed,
        holdout=None if holdout is None else float(holdout),
        folds=None if folds is None else int(folds), skip_failed=bool(skip_failed),
        overwrite=bool(overwrite), resolution=resolution, device=device,
        batch_size=batch_size, threads=threads)
    if not quiet:
        print(summary(str(name), bundle, res))
    return res
