"""End to end: ``quasar evaluate`` / ``anchors`` / ``reproduce`` on tiny native-format datasets
with a random-init RN50 (no pos.) bundle, checked against a direct computation in the test
(runtime Scorer scores/embeddings + the reference's selection re-implemented + scipy.stats).
Random weights carry no quality meaning: only agreement and structure are asserted."""
from __future__ import annotations

import csv
import json
import random
import shutil

import numpy as np
import pytest
from scipy import stats

pytestmark = pytest.mark.torch

import fixtures as F  # noqa: E402 (tests/evaluate/fixtures.py)

from quasar.cli import main  # noqa: E402
from quasar.evaluate.datasets import load_dataset  # noqa: E402

SEED = 42
SIZES = {"KonIQ10k": 16, "TID2013": 8, "KADIS700k": 6, "AVA": 10, "PIPAL": 6}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        h = tmp_path_factory.mktemp("quasar_home")
        mp.setenv("QUASAR_HOME", str(h))
        yield h


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name, n in SIZES.items():
        F.WRITERS[name](root / name, n=n, rng=1)
    return root


@pytest.fixture(scope="module")
def scorer(rn50_nopos_bundle):
    from quasar.runtime.scorer import Scorer

    return Scorer.from_bundle(rn50_nopos_bundle, anchors="text", device="cpu")


def run(capsys, *args):
    capsys.readouterr()
    main([str(a) for a in args])
    return capsys.readouterr().out


def evaluate_json(capsys, bundle, data_root, *args):
    out = run(capsys, "evaluate", "--bundle", bundle, "--data_root", data_root, "--format", "json",
              "--quiet", *args)
    return json.loads(out)


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def quasar_scores(emb, anchors):  # main.py: softmax(logit_scale * cos)[..., 0]
    e = unit(emb.astype(np.float64))
    logits = (1 / 0.07) * e @ np.asarray(anchors, np.float64).T
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True))[:, 0]


def check_fold(fold, pred, target):
    assert fold["n"] == len(pred)
    assert fold["srcc"] == pytest.approx(stats.spearmanr(pred, target)[0], abs=1e-6)
    assert fold["abs_srcc"] == pytest.approx(abs(stats.spearmanr(pred, target)[0]), abs=1e-6)
    assert fold["krcc"] == pytest.approx(stats.kendalltau(pred, target)[0], abs=1e-6)
    assert fold["plcc"] == pytest.approx(stats.pearsonr(pred, target)[0], abs=1e-5)


def test_evaluate_text_one_fold(capsys, home, data_root, rn50_nopos_bundle, scorer):
    res = evaluate_json(capsys, rn50_nopos_bundle, data_root, "--target-data", "KonIQ10k")
    target = load_dataset("KonIQ10k", data_root / "KonIQ10k")  # default subset
    pred = scorer.score([str(p) for p in target.paths])
    assert res["target_data"] == "KonIQ10k" and res["target_subset"] == target.subset
    assert res["n_images"] == len(target) and res["prompt_data"] == "text"
    assert len(res["metrics"]["folds"]) == 1
    check_fold(res["metrics"]["folds"][0], pred, target.scores)
    assert res["metrics"]["mean"]["srcc"] == res["metrics"]["folds"][0]["srcc"]
    # the embeddings were cached under QUASAR_HOME
    assert list((home / "embeddings").rglob("chunk-*.safetensors"))


def test_evaluate_text_folds_and_text_report(capsys, home, data_root, rn50_nopos_bundle, scorer):
    res = evaluate_json(capsys, rn50_nopos_bundle, data_root, "--target-data", "KonIQ10k",
                        "--target-data-subset", "all", "--target-cv-folds", 3, "--seed", 7)
    target = load_dataset("KonIQ10k", data_root / "KonIQ10k", "all")
    pred = scorer.score([str(p) for p in target.paths])
    np.random.seed(7)  # text anchors draw nothing: the folds are the first draw
    perm = np.random.permutation(len(pred))
    size = len(pred) // 3
    folds = [perm[:size], perm[size:2 * size], perm[2 * size:]]
    assert len(res["metrics"]["folds"]) == 3
    for f, idx in zip(res["metrics"]["folds"], folds):
        check_fold(f, pred[idx], target.scores[idx])
    srccs = [stats.spearmanr(pred[i], target.scores[i])[0] for i in folds]
    assert res["metrics"]["mean"]["srcc"] == pytest.approx(np.mean(srccs), abs=1e-6)
    assert res["metrics"]["std"]["srcc"] == pytest.approx(np.std(srccs), abs=1e-6)

    text = run(capsys, "evaluate", "--bundle", rn50_nopos_bundle, "--data-root", data_root,
               "--target-data", "KonIQ10k", "--target-data-subset", "all",
               "--target-cv-folds", 3, "--seed", 7, "--quiet")
    assert "|SRCC|" in text and "mean±std" in text and len(text.splitlines()) == 6


def _reference_fr(emb, is_ref, group, ratio):
    ref_idx = np.array([i for i, r in enumerate(is_ref) if r])
    sel = ref_idx[np.random.permutation(len(ref_idx))][:round(len(ref_idx) * ratio)]
    chosen = {group[i] for i in sel}
    dist = [i for i, r in enumerate(is_ref) if not r and group[i] in chosen]
    return unit(np.stack([emb[sel].mean(0), emb[dist].mean(0)]))


def test_evaluate_kadis_prompt(capsys, home, data_root, rn50_nopos_bundle, scorer):
    res = evaluate_json(capsys, rn50_nopos_bundle, data_root, "--prompt-data", "KADIS700k",
                        "--target-data", "TID2013", "--target-cv-folds", 2, "--prompt-ratio", 0.5)
    prompt = load_dataset("KADIS700k", data_root / "KADIS700k")
    target = load_dataset("TID2013", data_root / "TID2013")
    exp = json.loads((data_root / "KADIS700k" / F.EXPECTED).read_text())["extra"]
    p_emb = scorer.embed([str(p) for p in prompt.paths])
    t_emb = scorer.embed([str(p) for p in target.paths])
    np.random.seed(SEED)
    anchors = _reference_fr(p_emb.astype(np.float64), exp["is_reference"], exp["group"], 0.5)
    perm = np.random.permutation(len(target))
    pred = quasar_scores(t_emb, anchors)
    h = len(target) // 2
    for f, idx in zip(res["metrics"]["folds"], [perm[:h], perm[h:]]):
        check_fold(f, pred[idx], target.scores[idx])
    assert res["anchors"]["n_good"] == 1 and res["anchors"]["split"] == "full_reference"


def _reference_ava(emb, scores, ratio):
    median = np.median(scores)
    items = list(zip(scores, emb))
    high = sorted([it for it in items if it[0] > median], key=lambda d: d[0], reverse=True)
    low = sorted([it for it in items if not it[0] > median], key=lambda d: d[0])
    hl, ll = round(len(high) * ratio), round(len(low) * ratio)
    random.shuffle(high)
    random.shuffle(low)
    return unit(np.stack([np.mean([e for _, e in high[:hl]], 0),
                          np.mean([e for _, e in low[:ll]], 0)]))


def test_anchors_cli_and_ava_prompt(capsys, home, data_root, rn50_nopos_bundle, scorer, tmp_path):
    from quasar.runtime.scorer import Scorer

    bundle = tmp_path / "bundle"
    shutil.copytree(rn50_nopos_bundle, bundle)
    run(capsys, "anchors", bundle, "--prompt-data", "AVA", "--data-root", data_root,
        "--prompt-ratio", 0.75, "--name", "ava_test", "--quiet")
    prompt = load_dataset("AVA", data_root / "AVA")
    emb = scorer.embed([str(p) for p in prompt.paths]).astype(np.float64)
    random.seed(SEED)
    np.random.seed(SEED)
    want = _reference_ava(emb, prompt.scores, 0.75)

    s2 = Scorer.from_bundle(bundle, anchors="ava_test", device="cpu")  # checksums verified
    got = s2.bundle.anchors["ava_test"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    recipe = s2.bundle.recipes["ava_test"]
    assert recipe["prompt_data"] == "AVA" and recipe["prompt_ratio"] == 0.75
    assert json.loads((bundle / "bundle.json").read_text())["anchors"][-1] == "ava_test"

    # the stored set and the on-the-fly AVA anchors give the same evaluation
    a = evaluate_json(capsys, bundle, data_root, "--anchors", "ava_test", "--target-data", "TID2013")
    b = evaluate_json(capsys, bundle, data_root, "--prompt-data", "AVA", "--prompt-ratio", 0.75,
                      "--target-data", "TID2013")
    target = load_dataset("TID2013", data_root / "TID2013")
    pred = quasar_scores(scorer.embed([str(p) for p in target.paths]), want)
    check_fold(a["metrics"]["folds"][0], pred, target.scores)
    assert a["metrics"]["folds"][0]["srcc"] == pytest.approx(b["metrics"]["folds"][0]["srcc"], abs=1e-9)

    # a second prompt set with clustering: added next to the first
    run(capsys, "anchors", bundle, "--prompt-data", "PIPAL", "--data-root", data_root,
        "--aggregation-type", "clustering", "--n-clusters", 2, "--quiet")
    s3 = Scorer.from_bundle(bundle, anchors="all", device="cpu")
    assert s3.anchor_names[-2:] == ["ava_test", "pipal"]
    assert s3.bundle.recipes["pipal"]["n_clusters"] == 2


def test_reproduce(capsys, home, data_root, rn50_nopos_bundle, scorer, tmp_path):
    out = tmp_path / "repro"
    text = run(capsys, "reproduce", "--bundle", rn50_nopos_bundle, "--data-root", data_root,
               "--out", out, "--prompts", "text,KADIS700k,PIPAL",
               "--targets", "KonIQ10k,TID2013,SPAQ", "--target-cv-folds", 2, "--quiet")
    assert text == ""
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["prompt_data"], r["target_data"]) for r in rows] == [
        (p, t) for p in ("text", "KADIS700k", "PIPAL") for t in ("KonIQ10k", "TID2013", "SPAQ")]
    assert {r["status"] for r in rows if r["target_data"] == "SPAQ"} == {"missing"}
    assert {r["status"] for r in rows if r["target_data"] != "SPAQ"} == {"ok"}
    md = (out / "results.md").read_text()
    assert "| SPAQ | — | — | — |" in md and "SPAQ" in md.split("Skipped")[1]
    js = json.loads((out / "results.json").read_text())
    assert "SPAQ" in js["missing"]

    # each cell equals the single run with the same settings
    one = evaluate_json(capsys, rn50_nopos_bundle, data_root, "--prompt-data", "KADIS700k",
                        "--target-data", "TID2013", "--target-cv-folds", 2)
    row = next(r for r in rows if r["prompt_data"] == "KADIS700k" and r["target_data"] == "TID2013")
    assert float(row["srcc_mean"]) == pytest.approx(one["metrics"]["mean"]["srcc"], abs=1e-9)
    assert float(row["abs_srcc_mean"]) == pytest.approx(one["metrics"]["mean"]["abs_srcc"], abs=1e-9)


def test_errors(capsys, home, data_root, rn50_nopos_bundle):
    for args, msg in [
        (["--target-data", "SPAQ"], "SPAQ"),
        (["--target-data", "KonIQ10k", "--target-cv-folds", "x"], "--target-cv-folds"),
        (["--target-data", "KonIQ10k", "--prompt-data", "LIVE"], "prompt_data"),
        # ranges are declared with the options and refused while the command line is parsed
        (["--target-data", "KonIQ10k", "--prompt-ratio", 2],
         "--prompt-ratio: must be at most 1, got 2"),
        (["--target-data", "KonIQ10k", "--prompt-ratio", 0],
         "--prompt-ratio: must be greater than 0, got 0"),
        (["--target-data", "KonIQ10k", "--seed", -1], "--seed: must be at least 0, got -1"),
        (["--target-data", "KonIQ10k", "--batch-size", 0],
         "--batch-size: must be at least 1, got 0"),
        (["--target-data", "KonIQ10k", "--median-offset-ratio", 1],
         "--median-offset-ratio: must be less than 1, got 1"),
        (["--target-data", "KonIQ10k", "--device", "tpu"], "--device"),
        (["--target-data", "KonIQ10k", "--resolution", "300"], "--resolution"),
        (["--prompt-data", "text"], "--target-data"),
    ]:
        with pytest.raises(SystemExit) as e:
            run(capsys, "evaluate", "--bundle", rn50_nopos_bundle, "--data-root", data_root, *args)
        assert e.value.code == 2
        assert msg in capsys.readouterr().err


def test_evaluate_with_authors_embedding_files(capsys, home, data_root, rn50_nopos_bundle,
                                               scorer, tmp_path):
    """--prompt_embeddings / --target_embeddings: the authors' <name>.pt + .json (absolute
    paths of their machine, AVA entries as {path: score}) give the same result as our
    own embeddings of the same images."""
    torch = pytest.importorskip("torch")
    prompt = load_dataset("AVA", data_root / "AVA")
    target = load_dataset("TID2013", data_root / "TID2013")
    d = tmp_path / "released"
    d.mkdir()
    # the authors' order differs from ours: reverse the target file
    t_paths = [f"/home/authors/tid2013/distorted_images/{p.name}" for p in target.paths][::-1]
    t_emb = scorer.embed([str(p) for p in target.paths])[::-1].copy()
    torch.save(torch.from_numpy(t_emb), d / "tid2013_clip_RN50_openai_False.pt")
    (d / "tid2013_clip_RN50_openai_False.json").write_text(json.dumps({"results_paths": t_paths}))
    p_emb = scorer.embed([str(p) for p in prompt.paths])
    entries = [{f"/home/authors/ava/images/{p.name}": float(s)} for p, s in zip(prompt.paths, prompt.scores)]
    torch.save(torch.from_numpy(p_emb), d / "ava_clip_RN50_openai_False.pt")
    (d / "ava_clip_RN50_openai_False.json").write_text(json.dumps({"results_paths": entries}))

    ours = evaluate_json(capsys, rn50_nopos_bundle, data_root, "--prompt-data", "AVA",
                         "--target-data", "TID2013", "--target-cv-folds", 2)
    theirs = evaluate_json(capsys, rn50_nopos_bundle, data_root, "--prompt-data", "AVA",
                           "--target-data", "TID2013", "--target-cv-folds", 2,
                           "--prompt-embeddings", d / "ava_clip_RN50_openai_False.pt",
                           "--target-embeddings", d / "tid2013_clip_RN50_openai_False")
    for a, b in zip(ours["metrics"]["folds"], theirs["metrics"]["folds"]):
        assert a["srcc"] == pytest.approx(b["srcc"], abs=1e-6)
        assert a["n"] == b["n"]
