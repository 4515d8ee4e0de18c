"""``quasar report`` and ``evaluate/reproduce --report``: the numbers in the page against an
independent computation (NumPy sort, SciPy's bootstrap and Spearman), the galleries' order,
thumbnails and failed inputs against the score files, and the page itself rendered in a real
headless Chromium (no console errors, no network, every plot and image present)."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

pytest.importorskip("matplotlib")

from quasar.cli import main, run as cli_run  # noqa: E402



import fixtures as F  # noqa: E402 (tests/evaluate/fixtures.py)
from chromium import INSPECT_JS, Chromium, find_chromium  # noqa: E402 (tests/evaluate/)

needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="no chromium (scripts/test.sh installs it)")


def run(capsys, *args):
    capsys.readouterr()
    main([str(a) for a in args])
    return capsys.readouterr()


class Page(HTMLParser):
    """Gallery figures, failed-input rows, SVG count and every src/href of a report."""

    def __init__(self, text: str):
        super().__init__()
        self.figures, self.failed, self.refs = [], [], []
        self.svgs = self.scripts = 0
        self._fig = self._cap = self._row = self._cell = None
        self._in_failed = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a:
                self.refs.append(a[k])
        if tag == "svg":
            self.svgs += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "figure" and "thumb" in a.get("class", ""):
            self._fig = {"kind": a.get("data-kind"), "src": None, "caption": ""}
        elif tag == "img" and self._fig is not None:
            self._fig["src"] = a.get("src")
        elif tag == "figcaption" and self._fig is not None:
            self._cap = []
        elif tag == "br" and self._cap is not None:
            self._cap.append("\n")
        elif tag == "b" and self._cap is not None:
            self._cap.append("\t")
        elif tag == "table" and "failed" in a.get("class", ""):
            self._in_failed = True
        elif tag == "tr" and self._in_failed:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "figcaption" and self._cap is not None:
            self._fig["caption"] = "".join(self._cap)
            self._cap = None
        elif tag == "figure" and self._fig is not None:
            self.figures.append(self._fig)
            self._fig = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row and self._row[0] != "path":
                self.failed.append(self._row)
            self._row = None
        elif tag == "table":
            self._in_failed = False

    def handle_data(self, data):
        if self._cap is not None:
            self._cap.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def gallery(self, kind):
        out = []
        for f in self.figures:
            if f["kind"] == kind:
                m = re.match(r"#(\d+)\t([^\n]+)\n(.*)", f["caption"], re.S)
                out.append((int(m.group(1)), m.group(2), m.group(3), f["src"]))
        return out


def _img(path: Path, size, seed):
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.uniform(0, 255, 3) + rng.normal(0, 30, size=(h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def scored(tmp_path_factory, rn50_nopos_bundle):
    """Two real `quasar score` outputs: originals (CSV) and JPEG q=10 copies (JSONL), each with
    failed inputs; images of different shapes."""
    root = tmp_path_factory.mktemp("report_images")
    orig = [_img(root / "orig" / f"im{i:02d}.png", (40 + 13 * (i % 5), 90 - 11 * (i % 4)), i)
            for i in range(14)]
    (root / "jpeg").mkdir()
    for p in orig:  # same file names (pairs by --key name), JPEG data
        Image.open(p).convert("RGB").save(root / "jpeg" / p.name, format="JPEG", quality=10)
    (root / "orig" / "zz_broken.png").write_bytes(b"this is text")
    (root / "jpeg" / "zz_empty.png").write_bytes(b"")
    a, b = root / "a.csv", root / "b.jsonl"
    for src, out in ((root / "orig", a), (root / "jpeg", b)):
        code = cli_run(["score", str(src), str(root / "gone.png"), "--bundle", str(rn50_nopos_bundle),
                           "--anchors", "all", "--out", str(out), "--quiet"])
        assert code == 3
    return root, a, b


def _rows(path):
    if str(path).endswith(".jsonl"):
        return [json.loads(x) for x in open(path) if x.strip()]
    return list(csv.DictReader(open(path)))


def _num(v):
    return float(v) if v not in ("", None) else float("nan")


def test_report_galleries_failed_and_self_contained(capsys, scored, tmp_path):
    root, a, _ = scored
    out = tmp_path / "one.html"
    res = run(capsys, "report", a, "--out", out, "--top", 4)
    assert f"wrote {out}" in res.out
    text = out.read_text()
    page = Page(text)
    rows = _rows(a)
    sets = [c[len("score_"):] for c in rows[0] if c.startswith("score_")]
    assert len(sets) >= 1 and page.svgs == len(sets)  # one distribution per anchor set
    best, worst = page.gallery("best"), page.gallery("worst")
    assert len(best) == len(worst) == 4 * len(sets)
    for k, name in enumerate(sets):
        ok = [(r["path"], _num(r[f"score_{name}"])) for r in rows if r["status"] == "ok"]
        order = sorted(range(len(ok)), key=lambda i: -ok[i][1])  # stable: file order on ties
        want_best = [ok[i] for i in order[:4]]
        want_worst = [ok[i] for i in order[::-1][:4]]
        for got, want in ((best[4 * k:4 * k + 4], want_best), (worst[4 * k:4 * k + 4], want_worst)):
            assert [g[2] for g in got] == [w[0] for w in want]
            assert [g[1] for g in got] == [f"{w[1]:.4f}" for w in want]
        assert [g[0] for g in best[4 * k:4 * k + 4]] == [1, 2, 3, 4]
        assert [g[0] for g in worst[4 * k:4 * k + 4]] == [len(ok) - i for i in range(4)]
    # thumbnails: real JPEGs of the listed image, aspect kept, longest side <= 160
    for _, _, path, src in best + worst:
        assert src.startswith("data:image/jpeg;base64,")
        th = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert th.format == "JPEG" and max(th.size) <= 160
        w, h = Image.open(path).size
        assert abs(th.size[0] / th.size[1] - w / h) < 0.05
    # failed inputs with their reasons, as in the score file
    want_failed = [[r["path"], r["status"], r["error"]] for r in rows if r["status"] != "ok"]
    assert len(want_failed) == 2 and page.failed == want_failed
    # self-contained
    assert page.scripts == 0 and all(r.startswith(("data:", "#")) for r in page.refs)
    assert "Content-Security-Policy" in text


def _tables(tmp_path, seed=0):
    """Three synthetic score tables in CSV / Parquet / JSONL; 200 shared keys."""
    rng = np.random.default_rng(seed)
    n_a, n_b = 300, 260
    keys_a = [f"img/{i:04d}.jpg" for i in range(n_a)]
    keys_b = [f"img/{i:04d}.jpg" for i in range(100, 100 + n_b)][::-1]
    ya = rng.beta(5, 3, n_a)
    base = dict(zip(keys_a, ya))
    yb = np.array([base.get(k, rng.beta(5, 3)) + rng.normal(0.03, 0.05) for k in keys_b])
    yb[-8] = np.nan  # a failed row among the shared keys
    a = tmp_path / "a.csv"
    with open(a, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "score_text", "status", "error"])
        for k, v in zip(keys_a, ya):
            w.writerow([k, repr(float(v)), "ok", ""])
    import pyarrow as pa
    import pyarrow.parquet as pq

    b = tmp_path / "b.parquet"
    st = ["ok" if np.isfinite(v) else "not_found" for v in yb]
    pq.write_table(pa.table({"path": keys_b, "score_text": [None if not np.isfinite(v) else float(v)
                                                            for v in yb],
                             "status": st, "error": ["" if s == "ok" else "gone" for s in st]}), b)
    c = tmp_path / "c.jsonl"  # the user's own table: other column names
    with open(c, "w") as f:
        for k, v in zip(keys_a[:50], ya[:50]):
            f.write(json.dumps({"image": k, "mos": float(v) * 5}) + "\n")
    return a, b, c, keys_a, ya, keys_b, yb


def test_comparison_numbers_against_scipy(tmp_path):
    from quasar.evaluate.report import comparison_data
    from quasar.evaluate.score_table import read_score_table

    a, b, _, keys_a, ya, keys_b, yb = _tables(tmp_path)
    ta, tb = read_score_table(a), read_score_table(b)
    c = comparison_data(ta, tb, "text", "text", n_boot=5000, seed=3)
    fb = yb[np.isfinite(yb)]
    est, lo, hi = c["mean_diff"]
    assert est == pytest.approx(fb.mean() - ya.mean(), abs=1e-12)
    ref = stats.bootstrap((ya, fb), lambda x, y, axis: y.mean(axis) - x.mean(axis),
                          paired=False, vectorized=True, method="percentile", n_resamples=5000,
                          random_state=np.random.default_rng(99)).confidence_interval
    width = ref.high - ref.low
    assert abs(lo - ref.low) < 0.1 * width and abs(hi - ref.high) < 0.1 * width
    # pairs: keys in both with a finite score in both
    in_b = dict(zip(keys_b, yb))
    pairs = [(k, va, in_b[k]) for k, va in zip(keys_a, ya) if k in in_b and np.isfinite(in_b[k])]
    assert c["n_paired"] == len(pairs) == 199 and c["keys"] == [p[0] for p in pairs]
    d = np.array([p[2] - p[1] for p in pairs])
    pe, pl, ph = c["paired_diff"]
    assert pe == pytest.approx(d.mean(), abs=1e-12)
    ref = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=5000,
                          random_state=np.random.default_rng(7)).confidence_interval
    width = ref.high - ref.low
    assert abs(pl - ref.low) < 0.1 * width and abs(ph - ref.high) < 0.1 * width
    assert c["srcc"] == pytest.approx(stats.spearmanr([p[1] for p in pairs],
                                                      [p[2] for p in pairs])[0], abs=1e-12)
    assert c["paired_better"] == (int((d > 0).sum()), int((d < 0).sum()), 0)


@needs_chromium
def test_report_in_chromium(capsys, scored, tmp_path):
    """Two real score files (CSV + JSONL, failed inputs in both), compared by file name, and a
    third table with the user's own column names; rendered in headless Chromium."""
    root, a, b = scored
    _, _, c, *_ = _tables(tmp_path)
    out = tmp_path / "cmp.html"
    run(capsys, "report", a, b, "--out", out, "--key", "name", "--top", 3,
        "--labels", "original,jpeg-q10")
    with Chromium(find_chromium()) as browser:
        r = browser.render(out, INSPECT_JS, screenshot=str(tmp_path / "shot.png"))
    assert r["errors"] == []
    d = r["result"]
    n_sets = len([k for k in _rows(a)[0] if k.startswith("score_")])
    # per set: 2 distributions + comparison (overlay, paired-diff histogram, paired scatter)
    assert d["plots"] == 2 * n_sets + 3 * n_sets
    assert all(w > 150 and h > 150 for w, h in d["plot_sizes"])
    # axes, ticks, bars / points and labels really drawn: shapes and >= 8 texts per plot
    assert all(shapes >= 10 and texts >= 8 for shapes, texts in d["plot_elems"])
    assert d["images"] == d["images_ok"] == 2 * 2 * 3 * n_sets  # files x (best, worst) x top
    assert all(0 < max(s) <= 160 for s in d["image_sizes"])
    assert d["gallery_best"] == d["gallery_worst"] == 2 * 3 * n_sets and d["placeholders"] == 0
    assert d["external"] == [] and d["scripts"] == 0
    assert len(d["failed_rows"]) == 4 and {r[1] for r in d["failed_rows"]} >= {"not_found"}
    paired_rows = [r for r in d["cmp_rows"] if r[0] == "mean paired difference"]
    assert len(paired_rows) == n_sets and all("14 shared images" in r[2] for r in paired_rows)
    shot = Image.open(tmp_path / "shot.png")
    assert shot.size[0] >= 1000 and np.unique(np.asarray(shot.convert("L"))).size > 20  # not blank

    # the user's own table (image / mos columns), the thumbnails it names do not exist here
    out2 = tmp_path / "own.html"
    run(capsys, "report", c, "--path_column", "image", "--columns", "mos", "--out", out2,
        "--top", 2)
    with Chromium(find_chromium()) as browser:
        r = browser.render(out2, INSPECT_JS)
    assert r["errors"] == []
    assert r["result"]["plots"] == 1 and r["result"]["placeholders"] == 4
    assert r["result"]["images"] == 0


@needs_chromium
def test_browser_check_can_fail(tmp_path):
    """The Chromium check sees console errors, blocked network loads and broken images."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\""
        "default-src 'none'; img-src data:; script-src 'unsafe-inline'\"></head><body>"
        "<img src=\"https://example.com/x.png\"><img src=\"data:image/jpeg;base64,AAAA\">"
        "<script>console.error('boom')</script></body></html>")
    with Chromium(find_chromium()) as browser:
        r = browser.render(bad, INSPECT_JS)
    assert any("boom" in e for e in r["errors"])
    assert any("example.com" in e for e in r["errors"])
    assert r["result"]["images"] == 2 and r["result"]["images_ok"] == 0
    assert r["result"]["external"] == ["https://example.com/x.png"]


def test_report_errors(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,score_text\na.jpg,0.5\nb.jpg,high\n")
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("path,foo\na.jpg,1\n")
    for args, msg in [([tmp_path / "missing.csv"], "not found"),
                      ([bad], "'high' is not a number"),
                      ([nocol], "no score column"),
                      ([tmp_path / "x.txt"], "unknown score-file format"),
                      ([nocol, "--path_column", "file"], "no column 'file'"),
                      ([bad, bad, "--labels", "one"], "one label per file"),
                      ([bad, "--key", "hash"], "--key")]:
        out = tmp_path / "r.html"
        with pytest.raises(SystemExit) as e:
            run(capsys, "report", *args, "--out", out)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (args, err)
        assert not out.exists()


def test_ten_thousand_rows_stay_small(tmp_path):
    """Only gallery images get thumbnails: 10,000 rows x 3 anchor sets, two files compared."""
    from quasar.evaluate.report import build_report

    rng = np.random.default_rng(1)
    pool = [_img(tmp_path / "pool" / f"p{i}.png", (640, 480), i) for i in range(20)]
    files = []
    for f in range(2):
        p = tmp_path / f"s{f}.csv"
        with open(p, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "score_text", "score_a", "score_b", "status", "error"])
            for i in range(10_000):
                failed = i % 100 == 7
                s = ["", "", ""] if failed else [repr(float(x)) for x in rng.random(3)]
                w.writerow([str(pool[i % 20]) if i % 500 else f"missing/{i}.jpg", *s,
                            "not_found" if failed else "ok", "gone" if failed else ""])
        files.append(p)
    text = build_report(files)
    assert len(text.encode()) <= 20e6
    page = Page(text)
    assert len(page.figures) == 2 * 3 * 2 * 12 and len(page.failed) == 2 * 100


# --------------------------------------------------------------------------- evaluate / reproduce

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_data")
    for name, n in {"KonIQ10k": 16, "TID2013": 8, "KADIS700k": 6}.items():
        F.WRITERS[name](root / name, n=n, rng=2)
    return root


def _svg_titles(text: str):
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*SRCC[^<]*)</text>", text)]


@needs_chromium
def test_evaluate_and_reproduce_report(capsys, data_root, rn50_nopos_bundle, tmp_path):
    from quasar.evaluate.datasets import load_dataset
    from quasar.runtime.scorer import Scorer

    out = tmp_path / "eval.html"
    res = json.loads(run(capsys, "evaluate", "--bundle", rn50_nopos_bundle, "--data_root",
                         data_root, "--target_data", "KonIQ10k", "--format", "json", "--quiet",
                         "--report", out).out)
    target = load_dataset("KonIQ10k", data_root / "KonIQ10k")
    pred = Scorer.from_bundle(rn50_nopos_bundle, device="cpu").score(
        [str(p) for p in target.paths])
    s, p = stats.spearmanr(pred, target.scores)[0], stats.pearsonr(pred, target.scores)[0]
    assert res["metrics"]["folds"][0]["srcc"] == pytest.approx(s, abs=1e-6)
    assert _svg_titles(out.read_text()) == [f"text → KonIQ10k: SRCC {s:.3f}, PLCC {p:.3f}"]

    rdir = tmp_path / "repro"
    run(capsys, "reproduce", "--bundle", rn50_nopos_bundle, "--data_root", data_root, "--out",
        rdir, "--prompts", "text,KADIS700k", "--targets", "KonIQ10k,TID2013,SPAQ", "--quiet",
        "--report")
    page = (rdir / "report.html").read_text()
    titles = _svg_titles(page)
    assert [t.split(":")[0] for t in titles] == [
        f"{a} → {b}" for a in ("text", "KADIS700k") for b in ("KonIQ10k", "TID2013")]
    rows = list(csv.DictReader(open(rdir / "results.csv")))
    for t, r in zip(titles, [r for r in rows if r["status"] == "ok"]):
        assert f"SRCC {float(r['srcc_mean']):.3f}" in t  # one fold: the whole set
    grid = re.search(r'<table class="grid">(.*?)</table>', page, re.S).group(1)
    assert grid.count("<tr>") == 1 + 3 and "SPAQ" in grid  # header + a row per target
    with Chromium(find_chromium()) as browser:
        r = browser.render(rdir / "report.html", INSPECT_JS)
    assert r["errors"] == [] and r["result"]["plots"] == 4 and r["result"]["external"] == []


# --------------------------------------------------------------------------- issue 17 / 18
def _table(path: Path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "score_text", "status", "error"])
        w.writerows(rows)
    return path


def _quasar(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "quasar", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_report_never_writes_over_its_input(tmp_path):
    """Issue 17 #3: `quasar report s.csv --out s.csv` replaced its input with HTML. The
    input, a link to it, its run sidecar and a gallery image are all refused as --out."""
    import os

    img = _img(tmp_path / "imgs" / "a.png", (30, 20), 1)
    s = _table(tmp_path / "s.csv", [[str(img), 0.4, "ok", ""], [str(img), 0.6, "ok", ""]])
    (tmp_path / "s.csv.run.json").write_text("{}")
    os.link(s, tmp_path / "hard.html")
    (tmp_path / "soft.html").symlink_to(s)
    before = s.read_bytes()
    for out in (s, tmp_path / "hard.html", tmp_path / "soft.html", tmp_path / "s.csv.run.json",
                img):
        r = _quasar("report", s, "--out", out)
        assert r.returncode == 2, (out, r.stderr)
        assert "an output of this run" in r.stderr, r.stderr
        assert s.read_bytes() == before and img.exists()
    assert (tmp_path / "s.csv.run.json").read_text() == "{}"
    r = _quasar("report", s, "--out", tmp_path / "r.html")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["imgs", "s.csv", "s.csv.run.json", "hard.html", "soft.html", "r.html"])


def test_second_report_to_the_same_out_is_refused(tmp_path):
    """One lock discipline: while a process writes report.html, another report to it is
    refused at once, naming that process."""
    import subprocess
    import sys

    s = _table(tmp_path / "s.csv", [["a.png", 0.4, "ok", ""], ["b.png", 0.6, "ok", ""]])
    out = tmp_path / "r.html"
    hold = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom quasar.bundle.lock import OutputLock\n"
        "with OutputLock(sys.argv[1]):\n    print('holding', flush=True)\n    time.sleep(30)"),
        str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "holding"
        r = _quasar("report", s, "--out", out)
        assert r.returncode == 2 and f"process {hold.pid}" in r.stderr, r.stderr
        assert not out.exists()
    finally:
        hold.kill()
        hold.wait()


def test_extreme_and_non_finite_scores_are_reported(tmp_path):
    """Issue 17 #24: scores of ±1e308 crashed the histogram ("`bins` must increase
    monotonically"); NaN / inf / empty scores of ok rows were dropped silently (4 rows shown
    as 4 ok, n=1). Now the page is written, the statistics are exact (against math.fsum),
    and the non-finite rows are counted by kind and listed by path."""
    import math

    rows = [["a.png", "1e308", "ok", ""], ["b.png", "-1e308", "ok", ""], ["c.png", "0.5", "ok", ""],
            ["d.png", "0.2", "ok", ""], ["e.png", "inf", "ok", ""], ["f.png", "nan", "ok", ""],
            ["g.png", "", "ok", ""], ["h.png", "-inf", "ok", ""], ["x.png", "", "decode_error",
                                                                     "broken"]]
    s = _table(tmp_path / "s.csv", rows)
    s2 = _table(tmp_path / "s2.csv", rows[:4] + [["e.png", "0.9", "ok", ""]])
    for files in ([s], [s, s2]):
        out = tmp_path / f"r{len(files)}.html"
        r = _quasar("report", *files, "--out", out)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr and "Warning" not in r.stderr
        text = out.read_text()
        m = re.search(r'data-nonfinite="(\d+)">(.*?)</p>', text)
        assert m and m.group(1) == "4", text[:2000]
        assert "+inf: 1" in m.group(2) and "-inf: 1" in m.group(2)
        assert "empty or NaN: 2" in m.group(2)
        listed = re.search(r'<table class="nonfinite">(.*?)</table>', text).group(1)
        assert [p for p in ("e.png", "f.png", "g.png", "h.png") if p in listed] == \
            ["e.png", "f.png", "g.png", "h.png"]
        assert "a.png" not in listed and "x.png" not in listed
    # paired differences beyond float64 (1.7e308 - -1.7e308): said, not a crash or a warning
    p = _table(tmp_path / "p.csv", [["a.png", "-1.7e308", "ok", ""], ["b.png", "1e308", "ok", ""],
                                    ["c.png", "0.5", "ok", ""]])
    q = _table(tmp_path / "q.csv", [["a.png", "1.7e308", "ok", ""], ["b.png", "-1e308", "ok", ""],
                                    ["c.png", "0.25", "ok", ""]])
    r = _quasar("report", p, q, "--out", tmp_path / "pq.html", "--key", "name")
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    assert "2 differences beyond the float64 range" in (tmp_path / "pq.html").read_text()
    from quasar.evaluate.report import describe

    d = describe(np.array([1e308, -1e308, 0.5, 0.2, np.inf, np.nan]))
    assert d["n"] == 4
    assert d["mean"] == pytest.approx(math.fsum([1e308, -1e308, 0.5, 0.2]) / 4)
    assert (d["min"], d["max"]) == (-1e308, 1e308)


def _figures(monkeypatch):
    from quasar.evaluate import report as R

    figs = []
    orig = R.svg_of
    monkeypatch.setattr(R, "svg_of", lambda fig: figs.append(fig) or orig(fig))
    return figs


def _label_boxes(fig):
    """Window extents of every visible tick label and axis label, drawn with Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    r = canvas.get_renderer()
    out = []
    for ax in fig.axes:
        x0, x1 = sorted(ax.get_xlim())
        xt = [t for t, loc in zip(ax.get_xticklabels(), ax.get_xticks())
              if t.get_text() and x0 - 1e-12 * abs(x0) <= loc <= x1 + 1e-12 * abs(x1)]
        y0, y1 = sorted(ax.get_ylim())
        yt = [t for t, loc in zip(ax.get_yticklabels(), ax.get_yticks())
              if t.get_text() and y0 <= loc <= y1]
        out.append(([t.get_window_extent(r) for t in xt],
                    [t.get_window_extent(r) for t in yt],
                    [ax.xaxis.label.get_window_extent(r), ax.yaxis.label.get_window_extent(r)]))
    return out, fig.bbox


@pytest.mark.parametrize("spread", [3e-4, 1e-6, 0.3, 1e5])
def test_axis_labels_never_overlap_or_leave_the_figure(tmp_path, monkeypatch, spread):
    """Issue 18 #10: the x tick labels of every histogram overlapped (and the last one was cut
    at the edge) for the narrow score ranges of real runs; the y label was cut off."""
    from quasar.evaluate.report import build_report

    rng = np.random.default_rng(0)
    vals = 0.5158 + rng.normal(0, spread, 60)
    rows = [[f"i{i}.png", repr(float(v)), "ok", ""] for i, v in enumerate(vals)]
    a = _table(tmp_path / "a.csv", rows)
    b = _table(tmp_path / "b.csv", [[p, repr(float(v) + spread), st, e] for p, v, st, e in rows])
    figs = _figures(monkeypatch)
    build_report([str(a), str(b)], top=0, n_boot=50)
    assert len(figs) >= 4
    for fig in figs:
        boxes, page = _label_boxes(fig)
        for xs, ys, labels in boxes:
            assert len(xs) >= 2
            for group in (xs, ys):
                for i, p in enumerate(group):
                    assert page.x0 - 0.5 <= p.x0 and p.x1 <= page.x1 + 0.5, "label cut"
                    for q in group[i + 1:]:
                        assert not p.overlaps(q), "tick labels overlap"
            for lab in labels:
                assert page.x0 - 0.5 <= lab.x0 and lab.x1 <= page.x1 + 0.5, "axis label cut"


def test_overlaid_distributions_are_shares_of_images(tmp_path, monkeypatch):
    """Issue 18 #10: the "distributions" overlay read 15000 on its y axis for n=4 (a density
    over a 1e-4 wide range) under the label of image counts. Now each file's bars are the
    percentage of its images per bin (numpy's histogram over the same edges)."""
    from quasar.evaluate.report import build_report

    a_vals = np.array([0.51571, 0.51575, 0.51583, 0.51604])
    b_vals = np.array([0.51566, 0.51579, 0.51590, 0.51601, 0.51603])
    a = _table(tmp_path / "a.csv", [[f"i{i}.png", repr(float(v)), "ok", ""]
                                    for i, v in enumerate(a_vals)])
    b = _table(tmp_path / "b.csv", [[f"i{i}.png", repr(float(v)), "ok", ""]
                                    for i, v in enumerate(b_vals)])
    figs = _figures(monkeypatch)
    build_report([str(a), str(b)], top=0, n_boot=50)
    [fig] = [f for f in figs if f.axes[0].get_title().endswith("distributions")]
    ax = fig.axes[0]
    assert "%" in ax.get_ylabel() and ax.get_ylim()[1] <= 100
    edges = np.linspace(min(a_vals.min(), b_vals.min()), max(a_vals.max(), b_vals.max()), 41)
    for patch, vals in zip([p for p in ax.patches], (a_vals, b_vals)):
        heights = patch.get_data().values
        want = np.histogram(vals, bins=edges)[0] * 100.0 / vals.size
        np.testing.assert_allclose(heights, want, atol=1e-9)


def test_report_says_when_the_scores_come_from_random_weights(tmp_path):
    """Issue 18 #10: a report of scores made with a random-weights bundle looked like any
    other. The run identity `quasar score` records says so, and the page warns plainly."""
    pytest.importorskip("onnx")
    import rt_helpers

    rand = rt_helpers.write_tiny_bundle(tmp_path / "rand", random_init=True)
    real = rt_helpers.write_tiny_bundle(tmp_path / "real")
    imgs = [_img(tmp_path / "imgs" / f"{i}.png", (30, 20), i) for i in range(3)]
    for b, out in ((rand, "r.csv"), (real, "k.parquet")):
        r = _quasar("score", *imgs, "--bundle", b, "--out", tmp_path / out, "-q")
        assert r.returncode == 0, r.stderr
    for files, warned in (([tmp_path / "r.csv"], True), ([tmp_path / "k.parquet"], False),
                          ([tmp_path / "k.parquet", tmp_path / "r.csv"], True)):
        out = tmp_path / "page.html"
        assert _quasar("report", *files, "--out", out).returncode == 0
        text = out.read_text()
        assert ('id="random-weights"' in text) == warned
        if warned:
            note = re.search(r'id="random-weights">(.*?)</p>', text).group(1)
            assert "r.csv" in note and "k.parquet" not in note and "NO" in note
