"""Agreement of a reduced-precision path with the exact fp32 path, and the gate on it.

Used by ``quasar optimize`` (to gate a variant before it is written) and ``quasar bench``
(agreement columns). Pure numpy; SciPy (SRCC / KRCC) is imported inside the function, so the
lean runtime does not need it.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from quasar.errors import optional_import

DEFAULT_MIN_SRCC = 0.999
DEFAULT_MAX_P99_DSCORE = 0.01


@dataclass(frozen=True)
class Gate:
    """Thresholds a variant must meet on every anchor set."""

    min_srcc: float = DEFAULT_MIN_SRCC
    max_p99_dscore: float = DEFAULT_MAX_P99_DSCORE

    def __post_init__(self) -> None:
        if not -1.0 <= float(self.min_srcc) <= 1.0:
            raise ValueError(f"min_srcc must be in [-1, 1], got {self.min_srcc}")
        if not float(self.max_p99_dscore) >= 0.0:
            raise ValueError(f"max_p99_dscore must be >= 0, got {self.max_p99_dscore}")


def _num(x: float) -> Optional[float]:
    x = float(x)
    return x if np.isfinite(x) else None


def _scores(emb: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    from quasar.runtime.scoring import quasar_scores

    return quasar_scores(emb, anchors)


def agreement_report(ref: np.ndarray, var: np.ndarray, anchors: Mapping[str, np.ndarray],
                     gate: Gate = Gate()) -> Dict[str, Any]:
    """Agreement of variant embeddings ``var`` with fp32 embeddings ``ref`` (same images,
    [N, D]): cosine per image, and per anchor set the |Δscore| and the rank correlations of
    the two score vectors. ``passed``: every set meets ``gate``."""
    stats = optional_import("scipy.stats", "optimize", "quasar optimize")
    kendalltau, spearmanr = stats.kendalltau, stats.spearmanr
    ref = np.asarray(ref, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    if ref.shape != var.shape or ref.ndim != 2:
        raise ValueError(f"embeddings must be two [N, D] arrays of one shape, got "
                         f"{ref.shape} and {var.shape}")
    cos = (ref * var).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(var, axis=1))
    sets: Dict[str, Any] = {}
    failures: List[str] = []
    for name, a in anchors.items():
        s_ref, s_var = _scores(ref, a), _scores(var, a)
        d = np.abs(s_var - s_ref)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant scores: NaN, which fails the gate
            srcc = float(spearmanr(s_ref, s_var).statistic) if len(d) > 1 else float("nan")
            krcc = float(kendalltau(s_ref, s_var).statistic) if len(d) > 1 else float("nan")
        p99 = float(np.percentile(d, 99)) if len(d) else float("nan")
        sets[name] = {"max_abs_dscore": _num(d.max()) if len(d) else None,
                      "p99_abs_dscore": _num(p99), "srcc": _num(srcc), "krcc": _num(krcc),
                      "fp32_score_std": _num(s_ref.std()) if len(d) else None}
        if not (np.isfinite(srcc) and srcc >= gate.min_srcc):
            failures.append(f"{name}: SRCC {srcc:.6f} < {gate.min_srcc}")
        if not (np.isfinite(p99) and p99 <= gate.max_p99_dscore):
            failures.append(f"{name}: p99 |dscore| {p99:.3g} > {gate.max_p99_dscore}")
    if not anchors:
        failures.append("the bundle has no anchor sets to compare scores with")
    return {
        "images": int(len(ref)),
        "cosine_min": _num(cos.min()) if len(cos) else None,
        "cosine_median": _num(np.median(cos)) if len(cos) else None,
        "anchor_sets": sets,
        "gate": asdict(gate),
        "passed": not failures,
        "failures": failures,
    }


def format_report(name: str, report: Mapping[str, Any]) -> str:
    """The agreement report as a short markdown table."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    g = report["gate"]
    lines = [f"agreement of {name} with fp32 on {report['images']} held-out images: "
             f"cosine min {f(report['cosine_min'], '.6f')}, median "
             f"{f(report['cosine_median'], '.6f')}",
             "",
             "| anchor set | max abs dscore | p99 abs dscore | SRCC | KRCC |",
             "|---|---:|---:|---:|---:|"]
    for s, r in report["anchor_sets"].items():
        lines.append(f"| {s} | {f(r['max_abs_dscore'], '.3g')} | {f(r['p99_abs_dscore'], '.3g')} "
                     f"| {f(r['srcc'], '.6f')} | {f(r['krcc'], '.6f')} |")
    verdict = "PASSED" if report["passed"] else "REFUSED (" + "; ".join(report["failures"]) + ")"
    lines += ["", f"gate (SRCC >= {g['min_srcc']}, p99 |dscore| <= {g['max_p99_dscore']}): "
                  f"{verdict}"]
    speed = report.get("speed")
    if speed:
        lines.append(f"model-only speed on the held-out pass (indicative): fp32 "
                     f"{speed['fp32_img_s']:.1f} img/s, {name} {speed['variant_img_s']:.1f} img/s")
    return "\n".join(lines)
