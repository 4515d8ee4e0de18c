"""``quasar anchors BUNDLE --good/--bad`` and ``--scores`` end to end with a random-init RN50
(no pos.) bundle, checked against an independent computation in the test: embeddings from
the runtime Scorer, the selection (ratio, median offset, quantile, hold-out, folds) and the
centroids (mean; k-means with scikit-learn and the same seed) re-implemented here with
NumPy / random / SciPy, the stored tensors read back with safetensors directly. A bad input
must fail with a clear message and leave every byte of the bundle unchanged.
Random weights: only agreement is asserted, never quality."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

pytestmark = pytest.mark.torch

from quasar.cli import main  # noqa: E402
from quasar.cli import run as cli_run  # noqa: E402

N_GOOD, N_BAD, N_RATED = 7, 6, 24


def _image(path: Path, rng: np.random.Generator) -> str:
    h, w = int(rng.integers(40, 72)), int(rng.integers(40, 72))
    base = rng.uniform(0, 255, 3)
    img = base + rng.normal(0, rng.uniform(2, 60), size=(h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom_images")
    rng = np.random.default_rng(3)
    good = [_image(root / "good" / f"g{i:02d}.png", rng) for i in range(N_GOOD)]
    bad = [_image(root / "bad" / "sub" / f"b{i:02d}.jpg", rng) for i in range(N_BAD)]
    rated = [_image(root / "rated" / f"r{i:02d}.png", rng) for i in range(N_RATED)]
    return root, good, bad, rated


@pytest.fixture(scope="module")
def scorer(rn50_nopos_bundle):
    from quasar.runtime.scorer import Scorer

    return Scorer.from_bundle(rn50_nopos_bundle, anchors="all", device="cpu")


@pytest.fixture()
def bundle(rn50_nopos_bundle, tmp_path):
    b = tmp_path / "bundles" / "bundle"  # alone in its folder: temp dirs beside it would show
    shutil.copytree(rn50_nopos_bundle, b)
    return b


def run(capsys, *args):
    capsys.readouterr()
    main([str(a) for a in args])
    return capsys.readouterr().out


def fails(capsys, *args) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == 2
    return capsys.readouterr().err


def stored(bundle, name):
    """The anchor tensor and recipe, read with safetensors itself (not quasar's reader)."""
    from safetensors import safe_open

    with safe_open(str(bundle / "anchors.safetensors"), framework="numpy") as f:
        return f.get_tensor(name), json.loads(f.metadata()[name])


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def kmeans_centroid(e, k, seed):
    from sklearn.cluster import KMeans

    k = min(k, len(e))
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(e).labels_
    return np.mean([e[labels == c].mean(0) for c in np.unique(labels)], axis=0)


def centroid(e, how, k, seed):
    return e.mean(0) if how == "mean" else kmeans_centroid(e, k, seed)


def softmax_scores(emb, anchors):
    e = unit(np.asarray(emb, np.float64))
    logits = (1 / 0.07) * e @ np.asarray(anchors, np.float64).T
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True))[:, 0]


def bundle_bytes(b: Path):
    return {str(p.relative_to(b)): p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- independent selection

def side_draw(idx, ratio, how, seed_streams):
    """The reference's per-side draw: random.shuffle (mean) / np permutation (clustering)."""
    py, npr = seed_streams
    idx = list(idx)
    lim = round(len(idx) * ratio)
    if how == "mean":
        py.shuffle(idx)
        return idx[:lim]
    a = np.array(idx)
    return list(a[npr.permutation(len(a))][:lim])


def median_select(s, ratio, offset, how, seed):
    py, npr = random.Random(seed), np.random.RandomState(seed)
    med = np.median(s)
    high = [i for i in range(len(s)) if s[i] > med]
    low = [i for i in range(len(s)) if not s[i] > med]
    if offset:
        hs = sorted(high, key=lambda i: -s[i])
        ls = sorted(low, key=lambda i: s[i])
        keep = len(hs) - int(len(hs) * offset)
        hs, ls = hs[:keep], ls[:keep]
        if how == "mean":
            high, low = hs, ls
        else:
            high = [i for i in high if i in set(hs)]
            low = [i for i in low if i in set(ls)]
    elif how == "mean":
        high = sorted(high, key=lambda i: -s[i])
        low = sorted(low, key=lambda i: s[i])
    return side_draw(high, ratio, how, (py, npr)), side_draw(low, ratio, how, (py, npr))


def quantile_select(s, q, ratio, how, seed):
    py, npr = random.Random(seed), np.random.RandomState(seed)
    lo, hi = np.quantile(s, q), np.quantile(s, 1 - q)
    good = [i for i in range(len(s)) if s[i] >= hi]
    bad = [i for i in range(len(s)) if s[i] <= lo]
    return side_draw(good, ratio, how, (py, npr)), side_draw(bad, ratio, how, (py, npr))


# --------------------------------------------------------------------------- lists

def test_lists_mean(capsys, bundle, images, scorer, tmp_path):
    root, good, bad, _ = images
    lst = tmp_path / "bad.txt"
    lst.write_text("# bad examples\n" + "\n".join(bad) + "\n\n")
    out = run(capsys, "anchors", bundle, "--good", root / "good", "--bad", f"@{lst}",
              "--name", "mine")
    assert "added anchor set 'mine'" in out and "--anchors mine" in out

    want = unit(np.stack([scorer.embed(good).astype(np.float64).mean(0),
                          scorer.embed(bad).astype(np.float64).mean(0)]))
    got, recipe = stored(bundle, "mine")
    np.testing.assert_allclose(got, want, atol=2e-6)
    lines = "".join(f"good\t{p}\n" for p in good) + "".join(f"bad\t{p}\n" for p in bad)
    assert recipe["list_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert (recipe["split"], recipe["n_good"], recipe["n_bad"]) == ("lists", N_GOOD, N_BAD)
    assert recipe["aggregation_type"] == "mean" and recipe["seed"] == 42
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["anchors"][-1] == "mine"
    assert manifest["files"]["anchors.safetensors"] == hashlib.sha256(
        (bundle / "anchors.safetensors").read_bytes()).hexdigest()

    # then `quasar score --anchors mine` scores with exactly these anchors
    csv_out = tmp_path / "s.csv"
    assert cli_run(["score", *good, *bad, "--bundle", str(bundle), "--anchors", "mine,text",
                       "--out", str(csv_out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(csv_out)))
    emb = scorer.embed(good + bad)
    np.testing.assert_allclose([float(r["score_mine"]) for r in rows],
                               softmax_scores(emb, want), atol=1e-6)


@pytest.mark.parametrize("how,ratio,seed", [("clustering", 0.75, 7), ("mean", 0.6, 3)])
def test_lists_kmeans_and_ratio(capsys, bundle, images, scorer, how, ratio, seed):
    root, good, bad, _ = images
    run(capsys, "anchors", bundle, "--good", root / "good", "--bad", root / "bad", "--name", "k",
        "--aggregation_type", how, "--n_clusters", 3, "--prompt_ratio", ratio, "--seed", seed,
        "--quiet")
    py, npr = random.Random(seed), np.random.RandomState(seed)
    g = side_draw(range(N_GOOD), ratio, how, (py, npr))
    b = side_draw(range(N_BAD), ratio, how, (py, npr))
    eg, eb = scorer.embed(good).astype(np.float64), scorer.embed(bad).astype(np.float64)
    want = unit(np.stack([centroid(eg[g], how, 3, seed), centroid(eb[b], how, 3, seed)]))
    got, recipe = stored(bundle, "k")
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert (recipe["n_good"], recipe["n_bad"]) == (len(g), len(b))
    if how == "clustering":
        assert recipe["n_clusters"] == 3 and recipe["n_clusters_good"] == 3


# --------------------------------------------------------------------------- scores

def _ratings(images, tmp_path, seed=5):
    """A user's ratings file: relative paths (to the file's folder), column 'mos'."""
    root, _, _, rated = images
    y = np.round(np.random.default_rng(seed).uniform(1, 5, len(rated)), 3)
    y[3] = y[4]  # a tie
    f = root / f"ratings-{seed}.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "mos", "comment"])
        for p, v in zip(rated, y):
            w.writerow([os.path.relpath(p, root), v, "x"])
    return f, rated, y


@pytest.mark.parametrize("how", ["mean", "clustering"])
def test_scores_median_offset_ratio_holdout(capsys, bundle, images, scorer, tmp_path,
                                            monkeypatch, how):
    f, rated, y = _ratings(images, tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the score file's folder
    out = run(capsys, "anchors", bundle, "--scores", f, "--path_column", "file",
              "--score_column", "mos", "--split", "median", "--median_offset_ratio", 0.25,
              "--prompt_ratio", 0.8, "--aggregation_type", how, "--n_clusters", 2,
              "--seed", 11, "--name", "rated")
    emb = scorer.embed(rated).astype(np.float64)
    perm = np.random.RandomState(11).permutation(len(y))
    n_test = round(len(y) * 0.2)
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    g, b = median_select(y[train], 0.8, 0.25, how, 11)
    want = unit(np.stack([centroid(emb[train][g], how, 2, 11),
                          centroid(emb[train][b], how, 2, 11)]))
    got, recipe = stored(bundle, "rated")
    np.testing.assert_allclose(got, want, atol=2e-6)
    srcc = stats.spearmanr(softmax_scores(emb[test], want), y[test])[0]
    assert recipe["holdout_srcc"] == pytest.approx(srcc, abs=1e-6)
    assert recipe["n_holdout"] == n_test and recipe["score_column"] == "mos"
    assert (recipe["n_good"], recipe["n_bad"]) == (len(g), len(b))
    assert f"held-out SRCC (signed) on {n_test} images: {srcc:.4f}" in out
    lines = "".join(f"{float(v)!r}\t{p}\n" for p, v in zip(rated, y))
    assert recipe["list_sha256"] == hashlib.sha256(lines.encode()).hexdigest()


def test_scores_quantile_kfold_from_quasar_score_output(capsys, bundle, images, scorer,
                                                        tmp_path):
    """A previous `quasar score` output as the scores (its failed row skipped), quantile split,
    k-means, 3-fold SRCC; the stored anchors use every image."""
    _, _, _, rated = images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    prev = tmp_path / "prev.jsonl"
    assert cli_run(["score", *rated, str(broken), "--bundle", str(bundle), "--out", str(prev),
                       "--quiet"]) == 3
    emb = scorer.embed(rated).astype(np.float64)
    y = softmax_scores(emb, scorer.bundle.anchors["text"])
    q, k, seed = 0.3, 3, 5
    out = run(capsys, "anchors", bundle, "--scores", prev, "--split", f"quantile:{q}",
              "--folds", k, "--aggregation_type", "clustering", "--n_clusters", 2,
              "--seed", seed, "--name", "from_text")
    n = len(y)
    perm = np.random.RandomState(seed).permutation(n)
    size = n // k
    fold_srcc = []
    for i in range(k):
        test = perm[i * size:] if i == k - 1 else perm[i * size:(i + 1) * size]
        train = np.setdiff1d(np.arange(n), test)
        g, b = quantile_select(y[train], q, 1.0, "clustering", seed)
        a = unit(np.stack([kmeans_centroid(emb[train][g], 2, seed),
                           kmeans_centroid(emb[train][b], 2, seed)]))
        fold_srcc.append(stats.spearmanr(softmax_scores(emb[test], a), y[test])[0])
    g, b = quantile_select(y, q, 1.0, "clustering", seed)
    want = unit(np.stack([kmeans_centroid(emb[g], 2, seed), kmeans_centroid(emb[b], 2, seed)]))
    got, recipe = stored(bundle, "from_text")
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(recipe["fold_srcc"], fold_srcc, atol=1e-6)
    assert recipe["score_column"] == "score_text" and recipe["quantile"] == q
    assert recipe["n_images"] == n  # the failed row of the score file is not an input
    assert f"{k}-fold SRCC" in out


def test_skip_failed(capsys, bundle, images, scorer, tmp_path):
    root, good, bad, _ = images
    broken = tmp_path / "b" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    lst = tmp_path / "bad.txt"
    lst.write_text("\n".join(bad + [str(broken)]))
    out = run(capsys, "anchors", bundle, "--good", root / "good", "--bad", f"@{lst}",
              "--name", "s", "--skip_failed")
    got, recipe = stored(bundle, "s")
    want = unit(np.stack([scorer.embed(good).astype(np.float64).mean(0),
                          scorer.embed(bad).astype(np.float64).mean(0)]))
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert recipe["n_failed"] == 1 and recipe["n_bad"] == N_BAD and "left out 1" in out


# --------------------------------------------------------------------------- errors

def _bad_cases(images, tmp_path):
    root, good, bad, rated = images
    missing = tmp_path / "missing.txt"
    missing.write_text("\n".join(bad + [str(tmp_path / "nope.jpg")]))
    one = tmp_path / "one.txt"
    one.write_text(bad[0] + "\n")
    both = tmp_path / "both.txt"
    both.write_text("\n".join(bad + good[:1]))
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    for p in bad[:3]:
        shutil.copy(p, broken_dir)
    (broken_dir / "zz.jpg").write_bytes(b"\xff\xd8\xff not really")
    text_scores = tmp_path / "text.csv"
    with open(text_scores, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "mos"])
        for i, p in enumerate(rated):
            w.writerow([p, "good" if i == 5 else i])
    holes = tmp_path / "holes.csv"
    with open(holes, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "mos"])
        for i, p in enumerate(rated):
            w.writerow([p, "" if i == 2 else i])
    ties = tmp_path / "ties.csv"
    ties.write_text("path,mos\n" + "".join(f"{p},1\n" for p in rated))
    g = ["--good", root / "good"]
    return [
        ([*g, "--bad", f"@{missing}", "--name", "x"], "do not exist"),
        ([*g, "--bad", f"@{one}", "--name", "x"], "need at least 2"),
        ([*g, "--bad", f"@{tmp_path / 'nolist.txt'}", "--name", "x"], "does not exist"),
        ([*g, "--bad", f"@{both}", "--name", "x"], "both --good and --bad"),
        ([*g, "--bad", broken_dir, "--name", "x"], "could not be embedded"),
        ([*g, "--bad", root / "bad", "--name", "text"], "already has an anchor set 'text'"),
        ([*g, "--bad", root / "bad"], "--name"),
        (["--scores", text_scores, "--name", "x"], "'good' is not a number"),
        (["--scores", text_scores, "--score_column", "rating", "--name", "x"],
         "no score column ['rating']"),
        (["--scores", holes, "--name", "x"], "have no score"),
        (["--scores", ties, "--split", "quantile:0.25", "--name", "x"], "quantiles are equal"),
        (["--scores", tmp_path / "none.csv", "--name", "x"], "not found"),
        (["--scores", text_scores, *g, "--name", "x"], "not both"),
        (["--scores", holes, "--split", "quantile:0.7", "--name", "x"], "quantile must be"),
        (["--scores", holes, "--split", "quantile", "--median_offset_ratio", 0.2,
          "--name", "x"], "median_offset_ratio applies"),
    ]


def test_bad_inputs_are_clear_errors_and_leave_the_bundle_unchanged(capsys, bundle, images,
                                                                   tmp_path):
    before = bundle_bytes(bundle)
    siblings = sorted(os.listdir(bundle.parent))
    for args, msg in _bad_cases(images, tmp_path):
        err = fails(capsys, "anchors", bundle, *args)
        assert msg in err, (args, err)
        assert "Traceback" not in err
        assert bundle_bytes(bundle) == before, args
        assert sorted(os.listdir(bundle.parent)) == siblings, args  # no temp dirs left behind


def test_parse_split_forms():
    from quasar.evaluate.custom_anchors import parse_split

    assert parse_split(None, 0.25) == (None, 0.25)
    assert parse_split("median", 0.25) == ("median", 0.25)
    assert parse_split("quantile", 0.1) == ("quantile", 0.1)
    for form in ("quantile:0.2", "quantile=0.2", "quantile 0.2", "Quantile:0.2"):
        assert parse_split(form, 0.25) == ("quantile", 0.2)
    for bad in ("mean", "median:0.3", "quantile:x", "lists2"):
        with pytest.raises(ValueError):
            parse_split(bad, 0.25)
