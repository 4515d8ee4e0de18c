"""``quasar report``: one self-contained HTML file from one or more score files.

People judging image quality want to look at images, not at a CSV. For every score file and
anchor set the report shows the score distribution, galleries of the best and worst images
(embedded JPEG thumbnails, score and path under each) and the failed inputs with their
reasons. With two or more score files it compares each with the first: overlaid
distributions, the difference of the means with a bootstrap confidence interval, and, where
the same images (keys) occur in both, the paired differences (their mean with a bootstrap
interval, a histogram, and a scatter of one score against the other).

``quasar evaluate --report`` / ``quasar reproduce --report`` use :func:`write_evaluation_report`:
a predicted-vs-subjective scatter per experiment with SRCC / PLCC in the title, and the grid
as a table.

Self-contained: plots are matplotlib SVG inlined into the page (dense scatters rasterised
inside the SVG), thumbnails are ``data:`` URIs, the style sheet is inline, there is no
script, and a Content-Security-Policy forbids every network load - the file opens the same
offline, mailed, or years later. Size stays small because only gallery images get
thumbnails (10,000 rows: see docs/report.md for the measured time and size).

Needs matplotlib (``pip install "quasar-iqa[report]"``), imported only when a report is built.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import itertools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from quasar.errors import DatasetError, optional_import

from .score_table import ScoreTable, read_score_table, run_identity_of

log = logging.getLogger(__name__)

DEFAULT_TOP = 12
THUMB = 160
BOOTSTRAP = 2000
MAX_FAILED = 1000
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_counter = itertools.count()

CSS = """
:root{--fg:#1b1f24;--mut:#5b6570;--bg:#fff;--card:#f6f8fa;--line:#d0d7de;--good:#1a7f37;--bad:#cf222e}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
background:var(--bg);margin:0;padding:0 24px 48px;max-width:1400px}
header{border-bottom:1px solid var(--line);padding:16px 0 8px;margin-bottom:8px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid var(--line);
padding-bottom:4px}h3{font-size:16px;margin:20px 0 6px}h4{font-size:14px;margin:14px 0 6px}
.mut{color:var(--mut)}.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:6px}
nav a{margin-right:12px}
table{border-collapse:collapse;margin:6px 0 10px;font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--card)}td.n{text-align:right}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.plot{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:4px}
.plot svg{display:block;max-width:100%;height:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(172px,1fr));gap:10px;margin:6px 0 12px}
figure.thumb{margin:0;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:6px}
figure.thumb img,figure.thumb .noimg{display:block;width:160px;height:160px;object-fit:contain;
margin:0 auto;background:#e9ecef}
figure.thumb .noimg{display:flex;align-items:center;justify-content:center;text-align:center;
color:var(--mut);font-size:12px;padding:8px}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}
figcaption b{font-size:13px}
.rank{color:var(--mut);margin-right:4px}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
.err{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;word-break:break-word}
"""


# --------------------------------------------------------------------------- small helpers

def _require_matplotlib():
    optional_import("matplotlib.figure", "report", "quasar report",
                    also="(or pip install matplotlib)")


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _ci(est: float, lo: float, hi: float) -> str:
    """``est [lo, hi]`` with enough decimals to show the interval's width."""
    width = abs(hi - lo)
    digits = 4 if not width or not math.isfinite(width) else min(8, max(4, 2 - math.floor(
        math.log10(width))))
    return f"{_f(est, digits)} [{_f(lo, digits)}, {_f(hi, digits)}]"


def _f(x, digits: int = 4) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _e(x)
    if math.isnan(v):
        return "—"
    return f"{v:.{digits}f}"


def svg_of(fig) -> str:
    """A matplotlib Figure as inline SVG (no XML prolog; ids unique in the page)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none",
                                "svg.hashsalt": f"quasar-report-{next(_counter)}"}):
        fig.savefig(buf, format="svg")  # fixed margins (see _figure): one draw, no bbox pass
    s = buf.getvalue()
    start = s.find("<svg")
    return s[start:] if start >= 0 else s


def _figure(w: float = 4.2, h: float = 2.7, left: float = 0.75):
    """A figure with fixed margins wide enough for the tick labels (the last x label is
    centred on the axis end, so the right margin holds half of one) and at most five x
    ticks in a small font, so labels such as ``0.51575`` never overlap or leave the page."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(w, h), dpi=100)
    fig.subplots_adjust(left=left / w, right=1 - 0.35 / w, bottom=0.5 / h, top=1 - 0.3 / h)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, min_n_ticks=2))
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-4, 4))  # 2e5: "2" + "1e5"
    ax.tick_params(labelsize=8)
    return fig, ax


def _plot(svg: str, caption: str = "") -> str:
    t = f'<div class="mut">{_e(caption)}</div>' if caption else ""
    return f'<div class="plot" data-plot="1">{svg}{t}</div>'


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def _scale(*arrays: np.ndarray) -> float:
    """A power of two that brings the largest |value| into [2, 4) (1.0 for ordinary scores):
    sums, differences and interpolations of values near ±1.8e308 overflow otherwise."""
    m = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    return float(2.0 ** (math.frexp(m)[1] - 2)) if m > 1e150 else 1.0  # 2**1024 overflows


def _display_unit(*arrays: np.ndarray) -> Tuple[float, str]:
    """(divisor, axis-label suffix) for plotting: values beyond ±1e150 are drawn in units of
    a power of ten (matplotlib's transforms overflow on an axis 2e308 wide)."""
    m = max((float(np.max(np.abs(_finite(a)), initial=0.0)) for a in arrays), default=0.0)
    if m <= 1e150:
        return 1.0, ""
    e = int(math.floor(math.log10(m)))
    return 10.0 ** e, f" (×1e{e})"


def _bins(*arrays: np.ndarray, n: int = 40) -> np.ndarray:
    """``n`` equal bins over the finite values (``lo·(1-t) + hi·t``: no ``hi - lo`` that
    overflows for scores of ±1e308)."""
    v = np.concatenate([_finite(a) for a in arrays]) if arrays else np.zeros(0)
    if v.size == 0:
        return np.linspace(0, 1, n + 1)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        pad = max(abs(lo) * 1e-6, 0.5) if abs(lo) < 1e300 else abs(lo) * 1e-3
        lo, hi = lo - pad, hi + pad
    t = np.linspace(0.0, 1.0, n + 1)
    edges = lo * (1.0 - t) + hi * t
    edges[0], edges[-1] = lo, hi
    return np.maximum.accumulate(edges)


# --------------------------------------------------------------------------- statistics

def bootstrap_mean_ci(x, *, n_boot: int = BOOTSTRAP, level: float = 0.95, seed: int = 0,
                      y=None) -> Tuple[float, float, float]:
    """(estimate, low, high): the mean of ``x`` (or ``mean(y) - mean(x)`` for two independent
    samples) and its percentile bootstrap interval. Resamples in chunks of ~64k draws, which
    stay in the CPU cache (one 2000 x 10,000 index array would be 160 MB)."""
    a = _finite(x)
    b = None if y is None else _finite(y)
    if a.size == 0 or (b is not None and b.size == 0):
        return math.nan, math.nan, math.nan
    k = _scale(a, *(() if b is None else (b,)))
    if k != 1.0:  # extreme values: the same statistic on scaled data, scaled back
        est, lo, hi = bootstrap_mean_ci(a / k, n_boot=n_boot, level=level, seed=seed,
                                        y=None if b is None else b / k)
        with np.errstate(over="ignore"):
            return est * k, lo * k, hi * k
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    chunk = max(1, (1 << 16) // max(a.size, 1 if b is None else b.size))
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        ma = a[rng.integers(0, a.size, size=(k, a.size))].mean(axis=1)
        if b is None:
            stats[s:s + k] = ma
        else:
            stats[s:s + k] = b[rng.integers(0, b.size, size=(k, b.size))].mean(axis=1) - ma
    est = float(a.mean()) if b is None else float(b.mean() - a.mean())
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return est, float(lo), float(hi)


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank."""
    order = np.argsort(x, kind="mergesort")
    _, inv, counts = np.unique(x[order], return_inverse=True, return_counts=True)
    avg = np.cumsum(counts) - (counts - 1) / 2.0
    r = np.empty(x.size)
    r[order] = avg[inv]
    return r


def spearman(a, b) -> float:
    """Spearman's rank correlation of two finite samples in NumPy (NaN when a side is
    constant). The report's only SciPy use would be this one number, and importing
    scipy.stats costs more than building the rest of a comparison."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or a.min() == a.max() or b.min() == b.max():  # (ptp overflows at 1e308)
        return math.nan
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def describe(x: np.ndarray) -> Dict[str, float]:
    """n, mean, std, min, quartiles, max of the finite values (exact for ±1e308 too)."""
    v = _finite(x)
    if v.size == 0:
        return {k: math.nan for k in ("n", "mean", "std", "min", "p25", "median", "p75", "max")} | {"n": 0}
    k = _scale(v)
    w = v / k
    q = np.quantile(w, [0.25, 0.5, 0.75])
    d = {"mean": float(w.mean()), "std": float(w.std(ddof=1)) if v.size > 1 else 0.0,
         "min": float(w.min()), "p25": float(q[0]), "median": float(q[1]),
         "p75": float(q[2]), "max": float(w.max())}
    with np.errstate(over="ignore"):
        return {"n": int(v.size), **{name: val * k for name, val in d.items()}}


def paired(a: ScoreTable, b: ScoreTable, name_a: str, name_b: str, key: str = "path"
           ) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """(keys, scores in a, scores in b) for the keys that occur in both with a finite score
    (first occurrence of a repeated key); ``key``: ``path`` or ``name`` (file name)."""
    def keyed(t: ScoreTable, col: str) -> Dict[str, float]:
        out: Dict[str, float] = {}
        vals = t.scores[col]
        for p, v in zip(t.paths, vals):
            k = os.path.basename(p) if key == "name" else p
            if k not in out and math.isfinite(v):
                out[k] = float(v)
        return out

    ka, kb = keyed(a, name_a), keyed(b, name_b)
    keys = [k for k in ka if k in kb]
    return keys, np.array([ka[k] for k in keys]), np.array([kb[k] for k in keys])


# --------------------------------------------------------------------------- thumbnails

def _resolve_image(p: str, table_dir: Path, root: Optional[Path]) -> Optional[Path]:
    cands = [Path(p)] if os.path.isabs(p) else (
        [root / p] if root is not None else [Path(p), table_dir / p])
    return next((c for c in cands if c.is_file()), None)


def thumbnail(path: Optional[Path], size: int = THUMB) -> Optional[str]:
    """A ``data:image/jpeg;base64`` thumbnail (longest side ``size``), None if unreadable."""
    if path is None:
        return None
    try:
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            im.thumbnail((size, size), Image.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80, optimize=True)
    except Exception as exc:  # any decoder failure: the gallery shows a placeholder
        log.debug("no thumbnail for %s: %s", path, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- sections

@dataclass
class _Input:
    label: str
    table: ScoreTable
    dir: Path
    identity: Optional[dict] = None  # what `quasar score` recorded (bundle, random weights)


def _nonfinite_rows(t: ScoreTable) -> np.ndarray:
    """Rows with status ok but a non-finite score in any shown set."""
    bad = np.zeros(len(t), dtype=bool)
    for name in t.scores:
        bad[t.nonfinite(name)] = True
    return bad


def _nonfinite_section(t: ScoreTable, name: str, max_rows: int) -> str:
    """The rows (status ok) whose score is empty / NaN / ±inf: counted by kind and listed,
    never dropped silently."""
    idx = t.nonfinite(name)
    if idx.size == 0:
        return ""
    v = t.scores[name][idx]
    kinds = {"empty or NaN": int(np.isnan(v).sum()), "+inf": int((v == np.inf).sum()),
             "-inf": int((v == -np.inf).sum())}
    what = ", ".join(f"{k}: {n}" for k, n in kinds.items() if n)
    rows = "".join(f'<tr><td class="err">{_e(t.paths[i])}</td><td>{_e(repr(float(x)))}</td></tr>'
                   for i, x in zip(idx[:max_rows], v[:max_rows]))
    more = (f'<p class="mut">… and {idx.size - max_rows} more</p>' if idx.size > max_rows
            else "")
    return (f'<p class="warn" data-nonfinite="{idx.size}">{idx.size} rows with status ok have '
            f"no finite score in column <code>{_e(t.columns.get(name, name))}</code> ({what}): "
            "they are left out of the statistics, plots and galleries.</p><details><summary>"
            f'Rows without a finite score</summary><table class="nonfinite"><tr><th>path</th>'
            f"<th>value</th></tr>{rows}</table>{more}</details>")


def _random_weights_note(inputs: Sequence["_Input"]) -> str:
    """A plain warning when a score file was made with a random-weights bundle (its run
    identity says so): the scores then carry no meaning at all."""
    rand = [i for i in inputs if (i.identity or {}).get("random_init")]
    if not rand:
        return ""
    names = ", ".join(f"<b>{_e(i.label)}</b> ({_e((i.identity or {}).get('model', '?'))})"
                      for i in rand)
    return ('<p class="warn" id="random-weights">Random weights: ' + names + " scored with a "
            "bundle of RANDOMLY INITIALISED weights (a test bundle). Its scores carry NO "
            "quality meaning - the rankings, galleries and differences below are noise. "
            "Score with a bundle of real weights.</p>")


def _label_names(paths: Sequence[str], labels: Optional[Sequence[str]]) -> List[str]:
    if labels:
        if len(labels) != len(paths):
            raise DatasetError(f"--labels: {len(labels)} labels for {len(paths)} score files; give "
                               "one label per file")
        return [str(x) for x in labels]
    names = [os.path.basename(str(p)) for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def _hist_svg(series: Sequence[Tuple[str, np.ndarray]], title: str, xlabel: str = "score",
              share: bool = False) -> str:
    """Histogram of each series (finite values) on common bins, its mean dashed. The y axis
    counts images, or with ``share`` (overlaid files of different sizes) the percentage of
    each file's images per bin - never a probability density, whose values (thousands for
    scores spread over 1e-4) read like image counts."""
    fig, ax = _figure()
    unit, suffix = _display_unit(*[s for _, s in series])
    series = [(lab, _finite(s) / unit) for lab, s in series]
    bins = _bins(*[s for _, s in series])
    for i, (lab, s) in enumerate(series):
        v = s
        if v.size == 0:
            continue
        counts, _ = np.histogram(v, bins=bins)
        heights = counts * (100.0 / v.size) if share else counts
        # one filled step patch per series (ax.hist draws one patch per bar: slow in SVG)
        ax.stairs(heights, bins, fill=True, alpha=0.55 if len(series) > 1 else 0.85,
                  color=COLORS[i % len(COLORS)], label=f"{lab} (n={v.size})")
        ax.axvline(describe(v)["mean"], color=COLORS[i % len(COLORS)], lw=1.2, ls="--")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel + suffix)
    ax.set_ylabel("% of the file's images" if share else "images")
    if not share:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True, min_n_ticks=2))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return svg_of(fig)


def _scatter_svg(x: np.ndarray, y: np.ndarray, title: str, xlabel: str, ylabel: str,
                 diagonal: bool = False) -> str:
    fig, ax = _figure(3.5, 3.1, left=0.8)
    ux, sx = _display_unit(*((x, y) if diagonal else (x,)))
    uy, sy = (ux, sx) if diagonal else _display_unit(y)
    x, y = np.asarray(x, np.float64) / ux, np.asarray(y, np.float64) / uy
    xlabel, ylabel = xlabel + sx, ylabel + sy
    ax.scatter(x, y, s=6 if x.size > 2000 else 12, alpha=0.5 if x.size > 2000 else 0.8,
               color=COLORS[0], edgecolors="none", rasterized=x.size > 500)
    if diagonal and x.size:
        lo = float(min(x.min(), y.min()))
        hi = float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="#888", lw=1, ls=":")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return svg_of(fig)


def _stats_table(rows: Sequence[Tuple[str, Dict[str, float]]]) -> str:
    cols = ("n", "mean", "std", "min", "p25", "median", "p75", "max")
    head = "<tr><th></th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    body = "".join(
        f"<tr><th>{_e(lab)}</th>" + "".join(
            f'<td class="n">{d[c] if c == "n" else _f(d[c])}</td>' for c in cols) + "</tr>"
        for lab, d in rows)
    return f"<table>{head}{body}</table>"


def _gallery(items: Sequence[Tuple[int, str, float, Optional[str]]], kind: str) -> str:
    figs = []
    for rank, path, score, uri in items:
        img = (f'<img src="{uri}" alt="{_e(os.path.basename(path))}" loading="eager">'
               if uri else '<div class="noimg">image not readable here</div>')
        figs.append(f'<figure class="thumb" data-kind="{kind}">{img}<figcaption>'
                    f'<span class="rank">#{rank}</span><b>{_f(score)}</b><br>{_e(path)}'
                    "</figcaption></figure>")
    return f'<div class="gallery">{"".join(figs)}</div>'


def _failed_section(inp: _Input, max_failed: int) -> str:
    t = inp.table
    idx = np.flatnonzero(t.failed)
    if idx.size == 0:
        return "<p>No failed inputs.</p>"
    counts: Dict[str, int] = {}
    for i in idx:
        counts[t.status[i]] = counts.get(t.status[i], 0) + 1
    summary = ", ".join(f"{_e(k)}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    rows = "".join(f"<tr><td class=\"err\">{_e(t.paths[i])}</td><td>{_e(t.status[i])}</td>"
                   f"<td class=\"err\">{_e(t.errors[i])}</td></tr>" for i in idx[:max_failed])
    more = (f"<p class=\"mut\">… and {idx.size - max_failed} more (see the score file)</p>"
            if idx.size > max_failed else "")
    return (f"<p>{idx.size} failed ({summary}).</p><details open><summary>Failed inputs"
            f"</summary><table class=\"failed\"><tr><th>path</th><th>status</th><th>reason</th>"
            f"</tr>{rows}</table>{more}</details>")


def _file_section(k: int, inp: _Input, top: int, thumbs: Dict[Tuple[int, int], Optional[str]],
                  max_failed: int) -> str:
    t = inp.table
    parts = [f'<section id="file-{k}"><h2>{_e(inp.label)}</h2>'
             f'<p class="mut">{_e(t.source)}: {len(t)} rows, {int((~t.failed).sum())} ok, '
             f"{int(t.failed.sum())} failed, {int(_nonfinite_rows(t).sum())} ok without a "
             "finite score</p>"]
    for name, vals in t.scores.items():
        d = describe(vals)
        parts.append(f'<h3>anchor set <code>{_e(name)}</code></h3>')
        parts.append(_nonfinite_section(t, name, max_failed))
        parts.append(_stats_table([(t.columns.get(name, name), d)]))
        parts.append('<div class="plots">' + _plot(_hist_svg(
            [(name, vals)], f"{inp.label}: {name} (n={d['n']}, mean {_f(d['mean'])})")) + "</div>")
        order = _ranked(vals)
        for kind, sel in (("best", order[:top]), ("worst", order[::-1][:top])):
            items = [(r + 1 if kind == "best" else int(order.size) - r, t.paths[i],
                      float(vals[i]), thumbs.get((k, int(i)))) for r, i in enumerate(sel)]
            parts.append(f"<h4>{'Best' if kind == 'best' else 'Worst'} {len(items)} by "
                         f"<code>{_e(name)}</code></h4>" + _gallery(items, kind))
    parts.append("<h3>Failed inputs</h3>" + _failed_section(inp, max_failed) + "</section>")
    return "".join(parts)


def _ranked(vals: np.ndarray) -> np.ndarray:
    """Indices of finite scores, best first (ties in file order)."""
    ok = np.flatnonzero(np.isfinite(vals))
    return ok[np.argsort(-vals[ok], kind="stable")]


def _compare_pairs(inputs: Sequence[_Input]) -> List[Tuple[str, str]]:
    """Anchor-set names to compare between the first file and the others: the names they
    share, or the only set of each when they share none."""
    base = inputs[0].table
    out = []
    for other in inputs[1:]:
        common = [n for n in base.names if n in other.table.names]
        if common:
            out.extend((n, n) for n in common)
        elif len(base.names) == 1 and len(other.table.names) == 1:
            out.append((base.names[0], other.table.names[0]))
    return list(dict.fromkeys(out))


def comparison_data(a: ScoreTable, b: ScoreTable, na: str, nb: str, *, key: str = "path",
                    n_boot: int = BOOTSTRAP, seed: int = 0) -> Dict[str, object]:
    """The numbers of one comparison (b against a): means, their difference with a bootstrap
    CI (independent samples), and the paired differences b - a on shared keys."""
    da, db = describe(a.scores[na]), describe(b.scores[nb])
    diff = bootstrap_mean_ci(a.scores[na], y=b.scores[nb], n_boot=n_boot, seed=seed)
    keys, pa, pb = paired(a, b, na, nb, key)
    out: Dict[str, object] = {"a": da, "b": db, "mean_diff": diff, "n_paired": len(keys),
                              "keys": keys, "pa": pa, "pb": pb}
    if len(keys) >= 2:
        with np.errstate(over="ignore"):  # scores ±1.8e308 apart: beyond float64
            d = pb - pa
        out["d"], out["n_overflow"] = d, int((~np.isfinite(d)).sum())
        out["paired_diff"] = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed + 1)
        out["paired_better"] = (int((d > 0).sum()), int((d < 0).sum()), int((d == 0).sum()))
        out["srcc"] = spearman(pa, pb)
    return out


def _comparison_section(inputs: Sequence[_Input], key: str, n_boot: int, seed: int) -> str:
    base = inputs[0]
    parts = ['<section id="comparison"><h2>Comparison</h2>'
             f'<p class="mut">Each file against <b>{_e(base.label)}</b>. Difference = other − '
             f"{_e(base.label)}; 95% percentile bootstrap intervals ({n_boot} resamples, seed "
             f"{seed}); pairs matched by {'file name' if key == 'name' else 'path'}.</p>"]
    pairs = _compare_pairs(inputs)
    if not pairs:
        parts.append('<p class="warn">The files share no anchor set (score column) to compare; '
                     "choose columns with --columns.</p>")
    for other in inputs[1:]:
        for na, nb in pairs:
            if na not in base.table.scores or nb not in other.table.scores:
                continue
            c = comparison_data(base.table, other.table, na, nb, key=key, n_boot=n_boot,
                                seed=seed)
            title = f"{other.label} vs {base.label}: " + (na if na == nb else f"{nb} vs {na}")
            parts.append(f"<h3>{_e(title)}</h3>")
            parts.append(_stats_table([(f"{base.label} · {na}", c["a"]),
                                       (f"{other.label} · {nb}", c["b"])]))
            est, lo, hi = c["mean_diff"]
            rows = [("difference of means", _ci(est, lo, hi),
                     f"{c['a']['n']} vs {c['b']['n']} images (independent samples)")]
            plots = [_plot(_hist_svg([(base.label, base.table.scores[na]),
                                      (other.label, other.table.scores[nb])],
                                     f"{na if na == nb else nb + ' vs ' + na}: distributions",
                                     share=True))]
            if "paired_diff" in c:
                pe, pl, ph = c["paired_diff"]
                up, down, same = c["paired_better"]
                rows.append(("mean paired difference", _ci(pe, pl, ph),
                             f"{c['n_paired']} shared images: {up} higher, {down} lower, "
                             f"{same} equal; SRCC between the files {_f(c['srcc'])}"
                             + (f"; {c['n_overflow']} differences beyond the float64 range "
                                "(±1.8e308) left out of the mean" if c["n_overflow"] else "")))
                d = c["d"]
                plots.append(_plot(_hist_svg([("paired difference", d)],
                                             f"paired differences ({other.label} − {base.label})",
                                             xlabel="score difference")))
                plots.append(_plot(_scatter_svg(c["pa"], c["pb"],
                                                f"paired scores (n={c['n_paired']}, SRCC "
                                                f"{_f(c['srcc'], 3)})", base.label, other.label,
                                                diagonal=True)))
            else:
                rows.append(("paired differences", "—",
                             f"{c['n_paired']} shared images (need 2): keys are matched by "
                             f"{key}; try --key name"))
            parts.append("<table class=\"cmp\"><tr><th></th><th>estimate [95% CI]</th><th></th>"
                         "</tr>" + "".join(f"<tr><th>{_e(a)}</th><td>{b}</td><td>{_e(n)}</td></tr>"
                                           for a, b, n in rows) + "</table>")
            parts.append('<div class="plots">' + "".join(plots) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def _page(title: str, body: str, note: str = "") -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        from importlib.metadata import version

        ver = version("quasar-iqa")  # the distribution (import name: quasar)
    except Exception:
        ver = "?"
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
           "script-src 'none'")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><div class=\"mut\">QUASAR {ver} · generated {now}"
        f"{' · ' + note if note else ''}</div></header>{body}</body></html>\n")


# --------------------------------------------------------------------------- public

def build_report(score_files: Sequence, *, top: int = DEFAULT_TOP, columns=None,
                 path_column: Optional[str] = None, labels: Optional[Sequence[str]] = None,
                 key: str = "path", root=None, thumb_size: int = THUMB,
                 n_boot: int = BOOTSTRAP, seed: int = 0, max_failed: int = MAX_FAILED,
                 title: Optional[str] = None, workers: int = 4, guard=None) -> str:
    """The report's HTML for ``score_files`` (see the module docstring). ``guard`` (an
    :class:`~quasar.runtime.integrity.OutputGuard` of the report's output) refuses a gallery
    image that is the output itself."""
    _require_matplotlib()
    if not score_files:
        raise DatasetError("quasar report: give one or more score files (CSV / JSONL / Parquet)")
    if key not in ("path", "name"):
        raise ValueError(f"--key must be path or name, got {key!r}")
    if int(top) < 0:
        raise ValueError(f"--top must be >= 0, got {top}")
    names = _label_names([str(p) for p in score_files], labels)
    inputs = [_Input(lab, read_score_table(p, path_column=path_column, score_columns=columns),
                     Path(os.fspath(p)).resolve().parent, run_identity_of(p))
              for lab, p in zip(names, score_files)]
    root_p = Path(root) if root is not None else None

    # thumbnails of every gallery image, decoded in threads (Pillow releases the GIL)
    wanted: Dict[Tuple[int, int], Optional[Path]] = {}
    for k, inp in enumerate(inputs):
        for vals in inp.table.scores.values():
            order = _ranked(vals)
            for i in list(order[:top]) + list(order[::-1][:top]):
                wanted[(k, int(i))] = _resolve_image(inp.table.paths[i], inp.dir, root_p)
    if guard is not None:
        guard.check_inputs([str(p) for p in wanted.values() if p is not None])
    with ThreadPoolExecutor(max(1, int(workers))) as ex:
        uris = list(ex.map(lambda p: thumbnail(p, thumb_size), wanted.values()))
    thumbs = dict(zip(wanted, uris))
    n_missing = sum(u is None for u in uris)

    nav = "".join(f'<a href="#file-{k}">{_e(i.label)}</a>' for k, i in enumerate(inputs))
    if len(inputs) > 1:
        nav += '<a href="#comparison">comparison</a>'
    files = "".join(
        f"<tr><td>{_e(i.label)}</td><td class=\"err\">{_e(i.table.source)}</td>"
        f"<td class=\"n\">{len(i.table)}</td><td class=\"n\">{int((~i.table.failed).sum())}</td>"
        f"<td class=\"n\">{int(i.table.failed.sum())}</td>"
        f"<td class=\"n\">{int(_nonfinite_rows(i.table).sum())}</td>"
        f"<td>{_e(', '.join(i.table.columns.values()))}</td></tr>" for i in inputs)
    body = [f"<nav>{nav}</nav>", _random_weights_note(inputs),
            "<table class=\"files\"><tr><th>file</th><th>source</th><th>rows</th><th>ok</th>"
            "<th>failed</th><th>ok, no finite score</th><th>score columns</th></tr>"
            f"{files}</table>"]
    if n_missing:
        body.append(f'<p class="warn">{n_missing} gallery images could not be read from here '
                    "(moved, or paths relative to another folder: pass --root DIR); they show "
                    "a placeholder.</p>")
    if len(inputs) > 1:
        body.append(_comparison_section(inputs, key, int(n_boot), int(seed)))
    for k, inp in enumerate(inputs):
        body.append(_file_section(k, inp, int(top), thumbs, int(max_failed)))
    return _page(title or "QUASAR report", "".join(body),
                 note="higher scores = better images")


def _sidecar(score_file: str) -> str:
    from quasar.runtime.writers import RUN_SUFFIX

    return score_file + RUN_SUFFIX


def write_html(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file beside it + rename)."""
    from quasar.bundle.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def report(*scores, out: str = "report.html", top: int = DEFAULT_TOP, columns=None,
           path_column: Optional[str] = None, labels=None, key: str = "path", root=None,
           thumb_size: int = THUMB, bootstrap: int = BOOTSTRAP, seed: int = 0,
           max_failed: int = MAX_FAILED, title: Optional[str] = None,
           quiet: bool = False) -> None:
    """One self-contained HTML report of one or more score files (no network needed to view).

    Per file and anchor set: the score distribution, galleries of the best and worst images,
    the failed inputs with reasons. With 2+ files: a comparison with the first (overlaid
    distributions, mean difference with a bootstrap CI, paired differences on shared images).

    Args:
        scores: score files (.csv/.jsonl/.parquet from `quasar score`, or any table with a path
            and a score column).
        out: the HTML file to write (default report.html).
        top: images in each best / worst gallery (default 12).
        columns: score columns / anchor sets to show, comma-separated (default: all score_*).
        path_column: the path column (default: path).
        labels: names of the files in the report, comma-separated (default: file names).
        key: path | name - how images are matched between files for paired differences.
        root: folder that relative image paths are relative to (default: the current folder,
            then the score file's folder).
        thumb_size: thumbnail size in pixels (default 160).
        bootstrap: bootstrap resamples for the confidence intervals (default 2000).
        seed: seed of the bootstrap.
        max_failed: failed inputs listed per file (default 1000).
        title: page title.
        quiet: print nothing.

    Raises DatasetError (a score file that cannot be read: names the file, row, column and
    the flag that fixes it) or ValueError (a bad option value); nothing is written then.
    """
    from quasar.bundle.lock import OutputLock
    from quasar.runtime.integrity import OutputGuard

    labs = [x.strip() for x in labels.split(",")] if isinstance(labels, str) else labels
    files = [os.fspath(s) for s in scores]
    guard = OutputGuard([os.fspath(out)])
    guard.check_inputs(files + [p for p in map(_sidecar, files) if os.path.exists(p)])
    with OutputLock(os.fspath(out)):  # a second report to the same --out is refused at once
        text = build_report(files, top=int(top), columns=columns, path_column=path_column,
                            labels=labs, key=str(key), root=root, thumb_size=int(thumb_size),
                            n_boot=int(bootstrap), seed=int(seed), max_failed=int(max_failed),
                            title=title, guard=guard)
        p = write_html(out, text)
    if not quiet:
        print(f"quasar report: wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")


# --------------------------------------------------------------------------- evaluate

def evaluation_section(result, target: np.ndarray, index: int = 0) -> str:
    """Predicted-vs-subjective scatter of one :class:`ExperimentResult` (SRCC / PLCC of the
    whole set in the title) and its fold table."""
    from .metrics import plcc, srcc

    pred = np.asarray(result.predictions, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    s, p = srcc(pred, t), plcc(pred, t)
    title = f"{result.prompt_data} → {result.target_data}: SRCC {_f(s, 3)}, PLCC {_f(p, 3)}"
    svg = _scatter_svg(pred, t, title, "QUASAR score", "subjective score")
    m = result.metrics
    rows = "".join(f"<tr><td class=\"n\">{i}</td><td class=\"n\">{f.n}</td><td class=\"n\">"
                   f"{_f(f.srcc)}</td><td class=\"n\">{_f(f.plcc)}</td></tr>"
                   for i, f in enumerate(m.folds, 1))
    return (f'<div class="plot" data-plot="1" id="exp-{index}">{svg}<table><tr><th>fold</th>'
            f"<th>n</th><th>SRCC</th><th>PLCC</th></tr>{rows}</table><div class=\"mut\">"
            f"{_e(result.model)} @ {_e(result.resolution)}, {result.n_images} images "
            f"({_e(result.target_subset)})</div></div>")


def write_evaluation_report(path, experiments: Iterable[Tuple[object, np.ndarray]], *,
                            grid_markdown: Optional[str] = None, title: str = "QUASAR evaluation",
                            note: str = "") -> Path:
    """``quasar evaluate/reproduce --report``: (ExperimentResult, subjective scores) pairs ->
    one self-contained HTML file (scatter per experiment, the grid as a table)."""
    _require_matplotlib()
    body = []
    if note:
        body.append(f'<p class="warn">{_e(note)}</p>')
    if grid_markdown:
        body.append("<h2>Grid</h2>" + markdown_table_html(grid_markdown))
    secs = [evaluation_section(r, t, i) for i, (r, t) in enumerate(experiments)]
    body.append("<h2>Predicted vs subjective scores</h2>")
    body.append('<div class="plots">' + "".join(secs) + "</div>" if secs
                else "<p>No experiment ran.</p>")
    return write_html(path, _page(title, "".join(body)))


def markdown_table_html(md: str) -> str:
    """The pipe tables (and other lines as paragraphs) of a small markdown text as HTML."""
    out, rows = [], []

    def flush():
        if rows:
            head, *rest = rows
            out.append("<table class=\"grid\"><tr>" + "".join(f"<th>{_e(c)}</th>" for c in head)
                       + "</tr>" + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r)
                                           + "</tr>" for r in rest) + "</table>")
            rows.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            cells = [c.strip() for c in s[1:-1].split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        else:
            flush()
            if s:
                out.append(f"<p>{_e(s)}</p>")
    flush()
    return "".join(out)


__all__ = ["build_report", "report", "write_html", "bootstrap_mean_ci", "paired",
           "comparison_data", "write_evaluation_report", "evaluation_section", "thumbnail"]
