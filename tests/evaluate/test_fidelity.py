"""Issue 10 (fidelity with the reference on real data): stored anchor sets keep the reference's
folds; AADB and PieAPP with the authors' embedding files select what the reference's loaders
select; per-dataset resolutions and the paper's preset. The reference's code paths are
re-implemented here from photosynthesis-team/QUASAR (main.py, aggregation/, embeddings/)."""
from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import spearmanr

from quasar.errors import DatasetError
from quasar.evaluate.datasets import load_dataset
from quasar.evaluate.datasets.base import DatasetSamples
from quasar.evaluate.experiment import (EmbeddingSource, ExperimentConfig, load_target,
                                        make_anchors, run_experiment)
from quasar.evaluate import anchors as A

torch = pytest.importorskip("torch")

D = 8


import fixtures as fx  # noqa: E402 (tests/evaluate/fixtures.py)


def _bundle(tmp_path):
    import rt_helpers

    text = np.eye(2, D, dtype=np.float32)
    return rt_helpers.write_tiny_bundle(tmp_path / "bundle", dim=D, anchors={"text": text})


def _scorer(resolution="224"):
    return SimpleNamespace(embed_dim=D, manifest=SimpleNamespace(model="fake"),
                           resolution=resolution)


def _prompt_and_target(prompt):
    rs = np.random.RandomState(0)
    if prompt == "KADIS700k":
        refs = [f"/k/ref_imgs/I{r:03d}.png" for r in range(17)]
        dists = [f"/k/dist_imgs/I{r:03d}_{t:02d}_{l:02d}.bmp"
                 for r in range(17) for t in range(2) for l in range(2)]
        paths = refs + dists
        extra = {"is_reference": np.array([True] * 17 + [False] * len(dists)),
                 "group": [os.path.basename(p)[:4] for p in paths]}
        scores = np.full(len(paths), np.nan)
    else:  # AVA
        paths = [f"/ava/{i}.jpg" for i in range(120)]
        scores = np.round(rs.uniform(2, 8, len(paths)), 1)
        extra = {}
    prompt_s = DatasetSamples(prompt, "all", Path("/p"), [Path(p) for p in paths], scores,
                              extra=extra)
    target = DatasetSamples("KonIQ10k", "test", Path("/t"),
                            [Path(f"/t/{i}.jpg") for i in range(83)], rs.uniform(1, 5, 83))
    table = {prompt: rs.randn(len(paths), D), "KonIQ10k": rs.randn(83, D)}
    return prompt_s, target, table


def _reference_folds(prompt, prompt_s, n_target, k, seed):
    """main.py after seed_everything: the aggregation draws, then the fold permutation."""
    random.seed(seed)
    np.random.seed(seed)
    if prompt == "KADIS700k":  # aggregation/fr.py: one permutation of the references
        np.random.permutation(int(np.sum(prompt_s.extra["is_reference"])))
    else:  # aggregation/nr.py clustering: a permutation of the good, then of the bad indices
        s = prompt_s.scores
        med = np.median(s)
        np.random.permutation(int(np.sum(s > med)))
        np.random.permutation(int(np.sum(~(s > med))))
    perm = np.random.permutation(n_target)
    size = n_target // k
    return [perm[i * size:] if i == k - 1 else perm[i * size:(i + 1) * size] for i in range(k)]


@pytest.mark.parametrize("prompt, aggregation", [("KADIS700k", "mean"), ("AVA", "clustering")])
def test_stored_anchor_set_keeps_the_reference_folds(tmp_path, prompt, aggregation):
    bundle = _bundle(tmp_path)
    prompt_s, target, table = _prompt_and_target(prompt)

    def embed(samples, reference_file=None, resolution=None):
        return table[samples.name]

    cfg = ExperimentConfig(prompt_data=prompt, target_data="KonIQ10k", target_cv_folds=4,
                           aggregation_type=aggregation, n_clusters=3, seed=42)
    direct = run_experiment(cfg, bundle_dir=bundle, scorer=_scorer(), target_samples=target,
                            prompt_samples=prompt_s, embed=embed)
    # `quasar anchors`: build the set with its own fresh streams, store it with its recipe
    arr, recipe = make_anchors(cfg, A.ReferenceRandom(cfg.seed), bundle_dir=bundle,
                               prompt_samples=prompt_s, embed=embed)
    assert [d[0] for d in recipe["rng_draws"]] == ["np.permutation"] * (
        1 if prompt == "KADIS700k" else 2)
    A.add_anchor_set(bundle, "stored", arr, recipe)
    stored = run_experiment(dataclasses.replace(cfg, anchor_set="stored"), bundle_dir=bundle,
                            scorer=_scorer(), target_samples=target, embed=embed)

    want = _reference_folds(prompt, prompt_s, 83, 4, 42)
    for res in (direct, stored):
        got = [f.srcc for f in res.metrics.folds]
        ref = [spearmanr(res.predictions[i], target.scores[i])[0] for i in want]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stored.predictions, direct.predictions, atol=1e-6)

    # without the recorded draws the folds would be another permutation (the test can fail)
    recipe.pop("rng_draws")
    A.add_anchor_set(bundle, "old", arr, recipe)
    old = run_experiment(dataclasses.replace(cfg, anchor_set="old"), bundle_dir=bundle,
                         scorer=_scorer(), target_samples=target, embed=embed)
    assert [f.srcc for f in old.metrics.folds] != [f.srcc for f in stored.metrics.folds]


def test_replay_reproduces_both_streams():
    a = A.ReferenceRandom(7)
    a.permutation(11)
    a.shuffle(list(range(5)))
    a.permutation(3)
    b = A.ReferenceRandom(7)
    b.replay(a.draws)
    assert b.draws == a.draws
    np.testing.assert_array_equal(a.np.permutation(20), b.np.permutation(20))
    assert a.py.random() == b.py.random()
    with pytest.raises(ValueError, match="unknown recorded draw"):
        b.replay([["np.choice", 3]])


# --- the authors' embedding files --------------------------------------------------------------

def _save_reference(folder: Path, name: str, emb: np.ndarray, entries) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(torch.as_tensor(emb), folder / f"{name}.pt")
    (folder / f"{name}.json").write_text(json.dumps({"results_paths": entries}, indent=4))
    return folder / name


def _reference_aadb(base: Path):
    """embeddings/datasets.py AADB + utils/io.py load_local_data, re-implemented: item i is
    (emb_tensor[i], labels[x_paths[i]]), labels from labels.json beside the files."""
    emb = torch.load(f"{base}.pt")
    x_paths = json.loads(Path(f"{base}.json").read_text())["results_paths"]
    labels = json.loads((base.parent / "labels.json").read_text())
    return [(emb[i].numpy(), labels[x_paths[i]]) for i in range(len(x_paths))]


def test_aadb_set_order_and_scores_come_from_the_embedding_files(tmp_path):
    rs = np.random.RandomState(1)
    paths = [f"/home/authors/AADB/datasetImages_originalSize/farm1_{i}_{rs.randint(1e9)}.jpg"
             for i in range(9)]
    rs.shuffle(paths)  # the file's order, not a sorted one
    emb = rs.randn(9, D).astype(np.float32)
    base = _save_reference(tmp_path / "aadb", "aadb_clip_RN50_openai_False", emb, paths)
    (tmp_path / "aadb" / "labels.json").write_text(json.dumps(
        {p: round(float(rs.uniform()), 3) for p in reversed(paths)}))

    cfg = ExperimentConfig(target_data="AADB")
    never = lambda: pytest.fail("no dataset folder is needed")  # noqa: E731
    samples = load_target(cfg, never, target_embeddings=str(base))
    got = EmbeddingSource(None)(samples, str(base))
    want = _reference_aadb(base)
    assert samples.name == "AADB" and samples.subset == "all" and len(samples) == 9
    np.testing.assert_array_equal(got, np.stack([e for e, _ in want]))
    np.testing.assert_array_equal(samples.scores, [s for _, s in want])
    assert [str(p) for p in samples.paths] == paths
    with pytest.raises(DatasetError, match="'all'"):
        load_target(dataclasses.replace(cfg, target_data_subset="test"), never,
                    target_embeddings=str(base))
    (tmp_path / "aadb" / "labels.json").unlink()
    with pytest.raises(DatasetError, match="labels.json"):
        load_target(cfg, never, target_embeddings=str(base))


def test_aadb_without_embeddings_reads_the_dataset(tmp_path):
    root = fx.write_aadb(tmp_path / "aadb")
    samples = load_target(ExperimentConfig(target_data="AADB"), lambda: root)
    assert len(samples) == 9 and "embedding_rows" not in samples.extra


def test_pieapp_target_embeddings_align_with_the_reference_lookup(tmp_path):
    """The authors' PieAPP file lists a flat distorted_images/test (extraction/datasets.py);
    the reference looks each label row up as <that folder>/<distorted image>. Our reader's
    default set (no reference rows) must get exactly those embeddings."""
    root = fx.write_pieapp(tmp_path / "pieapp", include_reference=True)
    names = sorted(p.name for p in (root / "distorted_images" / "test").rglob("*.png"))
    folder = "/home/authors/PieAPP/distorted_images/test"
    emb = np.random.RandomState(2).randn(len(names), D).astype(np.float32)
    base = _save_reference(tmp_path / "emb", "pieapp_clip_RN50_openai_False", emb,
                           [f"{folder}/{n}" for n in names])
    lookup = {f"{folder}/{n}": emb[i] for i, n in enumerate(names)}  # the reference's dict

    samples = load_dataset("PieAPP", root)
    got = EmbeddingSource(None)(samples, str(base))
    np.testing.assert_array_equal(got, np.stack([lookup[f"{folder}/{p.name}"]
                                                 for p in samples.paths]))
    with_refs = load_dataset("PieAPP", root, include_references=True)
    with pytest.raises(DatasetError, match="no unique match"):
        EmbeddingSource(None)(with_refs, str(base))


# --- resolutions ---------------------------------------------------------------------------------

# configs/data_config.yml of photosynthesis-team/QUASAR @ 4a6eb26: each dataset's embeddings
# archive (dataset_path); generate_embeddigs.py suffixes the folder _224/_512, none = native.
DATA_CONFIG_ARCHIVES = {
    "KADIS700k": "uc?export=download&id=17VkK9eAwmnobvxGQQa9VdeQrNJEM5jGR",
    "PIPAL": "pipal.zip", "TID2013": "tid2013_224.zip", "KonIQ10k": "koniq10k.zip",
    "KADID10k": "kadid10k_224.zip", "LIVEitW": "liveitw_224.zip", "SPAQ": "spaq.zip",
    "TAD66k": "tad66k_224.zip", "AVA": "ava.zip", "AADB": "aadb.zip",
    "PieAPP": "pieapp_224.zip",
}


def test_paper_preset_follows_the_reference_archives():
    from quasar.evaluate.reproduce import PAPER_RESOLUTIONS, RESOLUTION_PRESETS, resolution_table

    want = {k: ("224" if v.endswith("_224.zip") else "512" if v.endswith("_512.zip")
                else "native") for k, v in DATA_CONFIG_ARCHIVES.items()}
    assert PAPER_RESOLUTIONS == want and RESOLUTION_PRESETS["paper"] is PAPER_RESOLUTIONS
    table = resolution_table("paper", {"SPAQ": "512"})
    assert table["SPAQ"] == "512" and table["TID2013"] == "224"
    with pytest.raises(ValueError, match="unknown resolution preset"):
        resolution_table("papers")
    with pytest.raises(ValueError, match="one of"):
        resolution_table(None, {"SPAQ": "1024"})


class _ResScorer:
    """Stand-in scorer whose embeddings depend on its resolution (so a mix-up shows)."""

    def __init__(self, resolution):
        self.resolution = resolution
        self.embed_dim = D
        self.manifest = SimpleNamespace(model="fake")


def test_prompt_and_target_resolutions_reach_their_datasets(tmp_path, monkeypatch):
    from quasar.evaluate import embeddings as E
    from quasar.evaluate.reproduce import run_grid

    seen = []

    def fake_dataset_embeddings(scorer, samples, **kw):
        seen.append((samples.name, scorer.resolution))
        rs = np.random.RandomState(len(samples.name) + len(scorer.resolution))
        return rs.randn(len(samples), D)

    monkeypatch.setattr(E, "dataset_embeddings", fake_dataset_embeddings)
    bundle = _bundle(tmp_path)
    prompt_s, target, _ = _prompt_and_target("KADIS700k")
    made = []

    def make(res):
        made.append(res)
        return _ResScorer(res)

    src = EmbeddingSource(_ResScorer("224"), make_scorer=make)
    cfg = ExperimentConfig(prompt_data="KADIS700k", target_data="KonIQ10k",
                           prompt_resolution="native", target_resolution="512")
    res = run_experiment(cfg, bundle_dir=bundle, scorer=_ResScorer("224"),
                         target_samples=target, prompt_samples=prompt_s, embed=src)
    assert seen == [("KADIS700k", "native"), ("KonIQ10k", "512")]
    assert (res.prompt_resolution, res.resolution) == ("native", "512")
    assert made == ["native", "512"]

    seen.clear()
    grid = run_grid(ExperimentConfig(), prompts=["text", "KADIS700k"], targets=["KonIQ10k"],
                    load=lambda n: prompt_s if n == "KADIS700k" else target, bundle_dir=bundle,
                    scorer=_ResScorer("224"), embed=EmbeddingSource(_ResScorer("224"),
                                                                    make_scorer=make),
                    progress=False,
                    resolutions={"KADIS700k": "native", "KonIQ10k": "224"})
    assert [c.status for c in grid.cells] == ["ok", "ok"]
    assert sorted(set(seen)) == [("KADIS700k", "native"), ("KonIQ10k", "224")]
    assert grid.cells[1].row()["prompt_resolution"] == "native"
    with pytest.raises(ValueError, match="resolution must be one of"):
        ExperimentConfig(target_resolution="300")


def test_check_resolutions_refuses_a_fixed_size_bundle():
    from quasar.evaluate.reproduce import PAPER_RESOLUTIONS, check_resolutions

    check_resolutions(PAPER_RESOLUTIONS, ["224", "512", "native"], "clip-rn50-nopos.openai")
    with pytest.raises(ValueError, match="dynamic input size"):
        check_resolutions(PAPER_RESOLUTIONS, ["224"], "vit-b-32.openai")
