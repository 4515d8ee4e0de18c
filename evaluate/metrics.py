"""Correlation metrics (signed SRCC / KRCC / PLCC) and the reference's k-fold protocol.

Conventions (QUASAR reference ``main.py``):

* one random permutation of all ``n`` samples, ``test_size = n // k``; fold ``i`` takes
  ``perm[i*test_size:(i+1)*test_size]``, the last fold takes the remainder;
* the permutation comes from the legacy global NumPy stream the reference seeded with
  ``seed_everything(seed)`` — here an explicit :class:`numpy.random.RandomState` that the
  caller passes after the anchors consumed their draws (see ``quasar.evaluate.anchors``);
* the reference prints ``abs(SRCC)``; we keep the sign (a negative value means the
  ranking is reversed, e.g. on DMOS-scored datasets) and also report ``|SRCC|``.

Needs SciPy (the ``evaluate`` extra); imported lazily so ``import quasar.evaluate`` stays light.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


def _pair(pred, target) -> Tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"predictions ({p.size}) and targets ({t.size}) differ in length")
    return p, t


def _correlation(stat, pred, target, need_spread: bool = False) -> float:
    """First value of a SciPy correlation ``stat(p, t)``; NaN when it is undefined (fewer
    than two pairs, or constant input where ``need_spread``)."""
    p, t = _pair(pred, target)
    if p.size < 2 or (need_spread and (np.ptp(p) == 0 or np.ptp(t) == 0)):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stat(p, t)[0])


def srcc(pred, target) -> float:
    """Signed Spearman rank correlation (NaN when undefined, e.g. constant input)."""
    from scipy.stats import spearmanr

    return _correlation(spearmanr, pred, target)


def krcc(pred, target) -> float:
    """Signed Kendall rank correlation (tau-b, SciPy's default)."""
    from scipy.stats import kendalltau

    return _correlation(kendalltau, pred, target)


def plcc(pred, target) -> float:
    """Signed Pearson linear correlation of the raw predictions."""
    from scipy.stats import pearsonr

    return _correlation(pearsonr, pred, target, need_spread=True)


def logistic4(x, b1, b2, b3, b4):
    """VQEG 4-parameter logistic: ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    z = -(np.asarray(x, dtype=np.float64) - b3) / max(abs(b4), 1e-12)
    return (b1 - b2) / (1.0 + np.exp(np.clip(z, -500.0, 500.0))) + b2


def fit_logistic(pred, target) -> Optional[np.ndarray]:
    """Least-squares fit of :func:`logistic4` mapping predictions to targets.

    Initial guess: ``b1``/``b2`` the target's max/min (swapped when the ranking is
    reversed), ``b3`` the predictions' mean, ``b4`` their standard deviation. Returns the
    parameters, or None when the fit does not converge or is not finite.
    """
    from scipy.optimize import curve_fit

    p, t = _pair(pred, target)
    if p.size < 5 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return None
    hi, lo = float(t.max()), float(t.min())
    if srcc(p, t) < 0:
        hi, lo = lo, hi
    p0 = [hi, lo, float(p.mean()), float(p.std()) or 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(logistic4, p, t, p0=p0, maxfev=20000)
    except (RuntimeError, ValueError, FloatingPointError):
        return None
    if not np.all(np.isfinite(params)) or not np.all(np.isfinite(logistic4(p, *params))):
        return None
    return params


def plcc_logistic(pred, target) -> Tuple[float, bool]:
    """PLCC after the 4-parameter logistic fit, and whether the fit converged.

    The fitted curve absorbs the direction of the relation, so the value is the usual
    non-negative-in-practice PLCC; when the fit fails we fall back to the raw signed PLCC
    and return ``False``.
    """
    p, t = _pair(pred, target)
    params = fit_logistic(p, t)
    if params is None:
        return plcc(p, t), False
    fitted = logistic4(p, *params)
    if np.ptp(fitted) == 0:
        return plcc(p, t), False
    return plcc(fitted, t), True


def kfold_indices(n: int, k: Optional[int], rng: Optional[np.random.RandomState] = None
                  ) -> List[np.ndarray]:
    """The reference's folds: ``rng.permutation(n)`` cut into ``k`` parts of ``n // k``,
    the last one taking the remainder. ``k`` None (or 0): one fold of all samples, in
    order, and no random draw (as the reference)."""
    if k is None or k == 0:
        return [np.arange(n)]
    k = int(k)
    if k < 1:
        raise ValueError(f"target_cv_folds must be a positive integer, got {k}")
    if n < k:
        raise ValueError(f"cannot split {n} samples into {k} folds; use fewer folds")
    rng = rng if rng is not None else np.random.RandomState()
    test_size = n // k
    perm = rng.permutation(n)
    folds = []
    for i in range(k):
        folds.append(perm[i * test_size:] if i == k - 1 else perm[i * test_size:(i + 1) * test_size])
    return folds


@dataclass(frozen=True)
class FoldMetrics:
    """Metrics of one fold (all signed except ``abs_srcc``)."""

    n: int
    srcc: float
    abs_srcc: float
    krcc: float
    plcc: float
    plcc_logistic: float
    logistic_converged: bool


def fold_metrics(pred, target) -> FoldMetrics:
    p, t = _pair(pred, target)
    s = srcc(p, t)
    pl, ok = plcc_logistic(p, t)
    return FoldMetrics(n=int(p.size), srcc=s, abs_srcc=abs(s), krcc=krcc(p, t), plcc=plcc(p, t),
                       plcc_logistic=pl, logistic_converged=ok)


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0 or np.all(np.isnan(a)):
        return float("nan"), float("nan")
    return float(np.nanmean(a)), float(np.nanstd(a))  # population std (ddof=0)


METRIC_NAMES = ("srcc", "abs_srcc", "krcc", "plcc", "plcc_logistic")


@dataclass(frozen=True)
class CVMetrics:
    """Per-fold metrics and their mean / population std (``ddof=0``) over the folds."""

    folds: List[FoldMetrics]
    mean: Dict[str, float] = field(default_factory=dict)
    std: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"folds": [asdict(f) for f in self.folds], "mean": dict(self.mean),
                "std": dict(self.std)}


def cross_validated(pred, target, k: Optional[int] = None,
                    rng: Optional[np.random.RandomState] = None) -> CVMetrics:
    """Metrics on each of the reference's folds (see :func:`kfold_indices`)."""
    p, t = _pair(pred, target)
    folds = [fold_metrics(p[idx], t[idx]) for idx in kfold_indices(p.size, k, rng)]
    mean, std = {}, {}
    for name in METRIC_NAMES:
        mean[name], std[name] = _mean_std([getattr(f, name) for f in folds])
    return CVMetrics(folds=folds, mean=mean, std=std)


def fmt(x: float, digits: int = 4) -> str:
    """Format a metric; NaN as ``nan``."""
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"
