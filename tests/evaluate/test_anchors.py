"""Image anchors against a straightforward re-implementation of the reference
(aggregation/fr.py, aggregation/nr.py, main.py's folds) with the same global seeding."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

from quasar.errors import DatasetError
from quasar.evaluate.metrics import kfold_indices
from quasar.evaluate import anchors as A

D = 16


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ---- independent reference computations -----------------------------------------------

def ref_fr(emb, paths, ratio):
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    ref_idx, ref_dist = [], {}
    for i, f in enumerate(names):
        if len(f.split("_")) == 1:
            ref_idx.append(i)
            ref_dist[f] = []
        else:
            ref_dist[f.split("_")[0]].append(i)
    ref_idx = np.array(ref_idx)
    limit = round(len(ref_idx) * ratio)
    sel = ref_idx[np.random.permutation(len(ref_idx))][:limit]
    dist = []
    for i in sel:
        dist.extend(ref_dist[names[i]])
    return _unit([emb[sel].mean(0), emb[dist].mean(0)])


def ref_nr_mean(emb, paths_scores, ratio, offset):
    median = np.median(list({list(d)[0]: list(d.values())[0] for d in paths_scores}.values()))
    items = [{"score": list(d.values())[0], "embed": e} for d, e in zip(paths_scores, emb)]
    high = [it for it in items if it["score"] > median]
    low = [it for it in items if not it["score"] > median]
    high = sorted(high, key=lambda d: d["score"], reverse=True)
    low = sorted(low, key=lambda d: d["score"])
    if offset is not None and offset > 0:
        n = len(high) - int(len(high) * offset)
        high, low = high[:n], low[:n]
    hl, ll = round(len(high) * ratio), round(len(low) * ratio)
    random.shuffle(high)
    high = high[:hl]
    random.shuffle(low)
    low = low[:ll]
    return _unit([np.mean([d["embed"] for d in high], 0), np.mean([d["embed"] for d in low], 0)])


def ref_nr_cluster(emb, scores, ratio, n_clusters, seed):
    from sklearn.cluster import KMeans

    median = np.median(scores)
    high = np.array([i for i, s in enumerate(scores) if s > median])
    low = np.array([i for i, s in enumerate(scores) if not s > median])
    high = high[np.random.permutation(len(high))][:round(len(high) * ratio)]
    low = low[np.random.permutation(len(low))][:round(len(low) * ratio)]
    out = []
    for idx in (high, low):
        x = emb[idx].astype(np.float64)
        labels = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit(x).labels_
        sums = {}
        for e, lab in zip(x, labels):
            s = sums.setdefault(int(lab), [np.zeros(x.shape[1]), 0])
            s[0] = s[0] + e
            s[1] += 1
        out.append(np.mean([s / c for s, c in sums.values()], axis=0))
    return _unit(out)


# ---- data -----------------------------------------------------------------------------

def fr_data(n_ref=23, n_dist=4, seed=0):
    rs = np.random.RandomState(seed)
    paths = []
    for r in range(n_ref):  # references first, as the reference code needs
        paths.append(f"/data/refs/I{r:03d}.png")
    for r in range(n_ref):
        for d in range(n_dist):
            paths.append(f"/data/dist/I{r:03d}_{d:02d}_{d % 3}.bmp")
    emb = rs.randn(len(paths), D).astype(np.float32)
    return emb, paths


def ava_data(n=301, seed=1):
    rs = np.random.RandomState(seed)
    scores = np.round(rs.uniform(2, 8, n), 1)  # many ties, like AVA means
    paths = [f"/ava/{i}.jpg" for i in range(n)]
    return rs.randn(n, D).astype(np.float32), paths, scores


# ---- tests ----------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.13])
@pytest.mark.parametrize("seed", [42, 7])
def test_full_reference_matches_reference_and_folds(ratio, seed):
    emb, paths = fr_data()
    _seed_everything(seed)
    want = ref_fr(emb, paths, ratio)
    want_folds = np.random.permutation(97)  # main.py's fold permutation comes next

    rng = A.ReferenceRandom(seed)
    got = A.build_anchor_set(emb, paths, prompt_data="KADIS700k", prompt_ratio=ratio, rng=rng)
    assert got.anchors.dtype == np.float32 and got.anchors.shape == (2, D)
    np.testing.assert_allclose(got.anchors, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got.anchors, axis=1), 1.0, atol=1e-6)
    folds = kfold_indices(97, 1, rng.np)
    np.testing.assert_array_equal(folds[0], want_folds)
    n_ref = round(23 * ratio)
    assert got.recipe["n_good"] == n_ref and got.recipe["n_bad"] == 4 * n_ref


def test_full_reference_order_independent_and_orphans():
    emb, paths = fr_data(n_ref=5)
    # shuffle so distortions come before references: the reference code crashes, we don't
    order = np.random.RandomState(3).permutation(len(paths))
    p2 = [paths[i] for i in order] + ["/data/dist/ZZZ_01.bmp"]
    e2 = np.concatenate([emb[order], np.ones((1, D), np.float32)])
    got = A.build_anchor_set(e2, p2, prompt_data="PIPAL", seed=1)
    refs = [i for i, p in enumerate(paths) if "_" not in os.path.basename(p)]
    dists = [i for i, p in enumerate(paths) if "_" in os.path.basename(p)]
    np.testing.assert_allclose(got.anchors, _unit([emb[refs].mean(0), emb[dists].mean(0)]),
                               atol=1e-6)


@pytest.mark.parametrize("ratio,offset", [(1.0, None), (0.5, None), (0.7, 0.2), (1.0, 0.5)])
def test_median_mean_matches_reference_and_folds(ratio, offset):
    emb, paths, scores = ava_data()
    _seed_everything(42)
    want = ref_nr_mean(emb, [{p: s} for p, s in zip(paths, scores)], ratio, offset)
    want_folds = np.random.permutation(60)

    rng = A.ReferenceRandom(42)
    got = A.build_anchor_set(emb, paths, scores, prompt_data="AVA", prompt_ratio=ratio,
                             median_offset_ratio=offset, rng=rng)
    np.testing.assert_allclose(got.anchors, want, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate(kfold_indices(60, 5, rng.np)), want_folds)
    assert got.recipe["median"] == pytest.approx(np.median(scores))


def test_median_good_are_above_median():
    emb, paths, scores = ava_data()
    s = A.build_anchor_set(emb, paths, scores, prompt_data="AVA", median_offset_ratio=0.3)
    med = np.median(scores)
    assert np.all(scores[s.good_idx] > med) and np.all(scores[s.bad_idx] <= med)
    # the offset drops those nearest the median
    assert scores[s.good_idx].min() >= np.sort(scores[scores > med])[::-1][:len(s.good_idx)].min()


@pytest.mark.parametrize("ratio", [1.0, 0.6])
def test_median_clustering_matches_reference_and_folds(ratio):
    emb, paths, scores = ava_data(n=120)
    _seed_everything(5)
    want = ref_nr_cluster(emb, scores, ratio, 4, 5)
    want_folds = np.random.permutation(50)

    rng = A.ReferenceRandom(5)
    got = A.build_anchor_set(emb, paths, scores, prompt_data="AVA", aggregation_type="clustering",
                             prompt_ratio=ratio, n_clusters=4, rng=rng)
    np.testing.assert_allclose(got.anchors, want, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate(kfold_indices(50, 3, rng.np)), want_folds)
    assert got.recipe["n_clusters"] == 4


def test_clustering_one_cluster_is_mean():
    emb, paths, scores = ava_data(n=40)
    c, k = A.aggregate(emb, "clustering", n_clusters=1)
    np.testing.assert_allclose(c, emb.astype(np.float64).mean(0), atol=1e-9)
    c, k = A.aggregate(emb[:3], "clustering", n_clusters=10)  # capped at the sample count
    assert k == 3


def test_bad_inputs():
    emb, paths, scores = ava_data(n=20)
    with pytest.raises(ValueError, match="prompt_ratio"):
        A.build_anchor_set(emb, paths, scores, prompt_data="AVA", prompt_ratio="abc")
    with pytest.raises(ValueError, match="prompt_ratio"):
        A.build_anchor_set(emb, paths, scores, prompt_data="AVA", prompt_ratio=0)
    with pytest.raises(ValueError, match="unknown prompt data"):
        A.build_anchor_set(emb, paths, scores, prompt_data="LIVE")
    with pytest.raises(ValueError, match="aggregation_type"):
        A.build_anchor_set(emb, paths, scores, prompt_data="AVA", aggregation_type="median")
    bad = scores.copy()
    bad[3] = np.nan
    with pytest.raises(DatasetError, match="score"):
        A.build_anchor_set(emb, paths, bad, prompt_data="AVA")
    with pytest.raises(DatasetError, match="reference"):
        A.build_anchor_set(emb, [f"/x/a_{i}.png" for i in range(20)], prompt_data="KADIS700k")
    # string ratio (what argparse hands the reference) is accepted as a number
    A.build_anchor_set(emb, paths, scores, prompt_data="AVA", prompt_ratio="0.5")


def test_full_reference_groups_agree_with_stem_rule_and_handle_underscores():
    emb, paths = fr_data(n_ref=9)
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    is_ref = ["_" not in s for s in stems]
    groups = [s.split("_")[0] for s in stems]
    a = A.build_anchor_set(emb, paths, prompt_data="KADIS700k", prompt_ratio=0.5, seed=3)
    b = A.build_anchor_set(emb, paths, prompt_data="KADIS700k", prompt_ratio=0.5, seed=3,
                           is_reference=is_ref, groups=groups)
    np.testing.assert_array_equal(a.anchors, b.anchors)
    # a reference named with '_' (KADIS has some): the stem rule cannot group it, groups can
    p2 = ["/r/old_town.png", "/r/plant.png", "/d/old_town_01_02.bmp", "/d/plant_03_01.bmp"]
    e2 = np.eye(4, D, dtype=np.float32) + 0.1
    c = A.build_anchor_set(e2, p2, prompt_data="KADIS700k", is_reference=[1, 1, 0, 0],
                           groups=["old_town", "plant", "old_town", "plant"])
    np.testing.assert_allclose(c.anchors, _unit([e2[:2].mean(0), e2[2:].mean(0)]), atol=1e-6)


# ---- `quasar anchors --prompt-data` against an existing set (issue 17 #20) -------------

def test_prompt_data_anchors_never_replace_a_set_without_overwrite(tmp_path):
    """`--prompt-data AVA --name text` used to replace the bundle's text anchors silently
    (and ignore --overwrite) while --good/--bad refused: both refuse now, before any image
    is embedded, and --overwrite replaces. Real `quasar anchors` processes, tiny bundle."""
    import json
    import subprocess
    import sys

    pytest.importorskip("onnx")
    import fixtures as F
    import rt_helpers

    bundle = rt_helpers.write_tiny_bundle(tmp_path / "bundles" / "b")
    data = tmp_path / "data"
    F.WRITERS["AVA"](data / "AVA", n=10, rng=1)

    def anchors(*extra):
        return subprocess.run([sys.executable, "-m", "quasar", "anchors", str(bundle),
                               "--prompt-data", "AVA", "--data-root", str(data), "--quiet",
                               *extra], capture_output=True, text=True, timeout=300)

    def files():
        return {p.name: p.read_bytes() for p in bundle.iterdir()}

    before = files()
    r = anchors("--name", "text")
    assert r.returncode == 2, r.stderr
    assert "already has an anchor set 'text'" in r.stderr and "--overwrite" in r.stderr
    assert files() == before
    assert anchors().returncode == 0  # default name: "ava"
    with_ava = files()
    r = anchors()
    assert r.returncode == 2 and "already has an anchor set 'ava'" in r.stderr
    assert files() == with_ava
    r = anchors("--name", "text", "--overwrite", "--prompt-ratio", "0.5")
    assert r.returncode == 0, r.stderr
    from safetensors import safe_open

    with safe_open(str(bundle / "anchors.safetensors"), framework="numpy") as f:
        assert json.loads(f.metadata()["text"])["prompt_data"] == "AVA"
        assert json.loads(f.metadata()["text"])["prompt_ratio"] == 0.5
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["b"]
