"""Embeddings cache (resumable, keyed, validated) with a stand-in scorer, and the reader of
the authors' released embedding files."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from quasar.errors import DatasetError
from quasar.evaluate import embeddings as E
from quasar.evaluate.datasets.base import DatasetSamples

D = 6


class FakeScorer:
    """Embeds a path as a deterministic function of its name; counts calls."""

    def __init__(self, sha="ab" * 32, resolution="224", fail_on=()):
        self.manifest = SimpleNamespace(
            model="fake.model", files={"encoder.onnx": sha},
            encoder=SimpleNamespace(file="encoder.onnx", external_data=None))
        self.resolution = resolution
        self.embed_dim = D
        self.calls = []
        self.fail_on = set(fail_on)

    @staticmethod
    def vec(p):
        rs = np.random.RandomState(abs(hash(Path(p).name)) % (2 ** 31))
        return rs.randn(D).astype(np.float32)

    def embed(self, images, errors="raise"):
        self.calls.append(list(images))
        errs = [ValueError(f"{p}: broken") if Path(p).name in self.fail_on else None
                for p in images]
        vals = np.stack([self.vec(p) for p in images])
        return SimpleNamespace(values=vals, errors=errs)


def _samples(root, n, name="KonIQ10k", subset="test"):
    paths = [Path(root) / "imgs" / f"{i:03d}.jpg" for i in range(n)]
    return DatasetSamples(name=name, subset=subset, root=Path(root), paths=paths,
                          scores=np.arange(n, dtype=np.float64))


def test_embeddings_cached_and_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    s = _samples(tmp_path / "ds", 23)
    want = np.stack([FakeScorer.vec(p) for p in s.paths])
    sc = FakeScorer()
    got = E.dataset_embeddings(sc, s, chunk_size=5, progress=False)
    np.testing.assert_array_equal(got, want)
    assert [len(c) for c in sc.calls] == [5, 5, 5, 5, 3]
    d = E.cache_dir_for(sc.manifest, s, "224")
    assert d.is_relative_to(tmp_path / "home" / "embeddings")
    assert sorted(p.name for p in d.iterdir()) == ["chunk-%06d.safetensors" % i for i in range(5)] + ["index.json"]
    assert json.loads((d / "index.json").read_text())["paths"][0] == "imgs/000.jpg"

    # second run: all from cache
    sc2 = FakeScorer()
    np.testing.assert_array_equal(E.dataset_embeddings(sc2, s, chunk_size=5, progress=False), want)
    assert sc2.calls == []

    # interrupted run: a missing and a torn chunk are recomputed, the rest reused
    (d / "chunk-000002.safetensors").unlink()
    (d / "chunk-000004.safetensors").write_bytes(b"garbage")
    sc3 = FakeScorer()
    np.testing.assert_array_equal(E.dataset_embeddings(sc3, s, chunk_size=5, progress=False), want)
    assert [c[0].name for c in map(lambda c: [Path(x) for x in c], sc3.calls)] == ["010.jpg", "020.jpg"]


def test_cache_keyed_and_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    s = _samples(tmp_path / "ds", 8)
    E.dataset_embeddings(FakeScorer(), s, chunk_size=4, progress=False)
    # another encoder, another resolution, another subset: separate caches, recomputed
    for sc, smp in [(FakeScorer(sha="cd" * 32), s), (FakeScorer(resolution="512"), s),
                    (FakeScorer(), _samples(tmp_path / "ds", 8, subset="all"))]:
        E.dataset_embeddings(sc, smp, chunk_size=4, progress=False)
        assert len(sc.calls) == 2
    # same key, different paths (a file list changed): the stale cache is discarded
    s2 = _samples(tmp_path / "ds", 9)
    sc = FakeScorer()
    got = E.dataset_embeddings(sc, s2, chunk_size=4, progress=False)
    assert sum(len(c) for c in sc.calls) == 9
    np.testing.assert_array_equal(got, np.stack([FakeScorer.vec(p) for p in s2.paths]))
    # no cache
    sc = FakeScorer()
    E.dataset_embeddings(sc, s2, cache=False, progress=False)
    assert sum(len(c) for c in sc.calls) == 9


def test_broken_image_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    s = _samples(tmp_path / "ds", 4)
    with pytest.raises(DatasetError, match="002.jpg"):
        E.dataset_embeddings(FakeScorer(fail_on={"002.jpg"}), s, progress=False)


def test_missing_encoder_checksum(tmp_path):
    sc = FakeScorer()
    sc.manifest.files = {}
    with pytest.raises(DatasetError, match="sha256"):
        E.encoder_key(sc.manifest)


# ---- the authors' released files ------------------------------------------------------

torch = pytest.importorskip("torch")

from quasar.evaluate.reference_embeddings import align, load_reference_embeddings  # noqa: E402


def _save(d: Path, name: str, emb, entries):
    d.mkdir(parents=True, exist_ok=True)
    torch.save(torch.as_tensor(emb), d / f"{name}.pt")
    (d / f"{name}.json").write_text(json.dumps({"results_paths": entries}, indent=4))
    return d / name


def test_reference_embeddings_plain_and_scored(tmp_path):
    emb = np.random.RandomState(0).randn(4, D).astype(np.float32)
    paths = [f"/home/authors/koniq/1024x768/{i}.jpg" for i in range(4)]
    base = _save(tmp_path / "koniq10k", "koniq10k_clip_RN50_openai_False", emb, paths)
    for arg in (base, str(base) + ".pt", str(base) + ".json"):
        r = load_reference_embeddings(arg)
        np.testing.assert_array_equal(r.embeddings, emb)
        assert r.paths == paths and r.scores is None and r.embeddings.dtype == np.float32

    scored = [{f"/x/ava/{i}.jpg": 5.0 + i} for i in range(4)]
    r = load_reference_embeddings(_save(tmp_path / "ava", "ava_x", emb, scored))
    assert r.paths == [f"/x/ava/{i}.jpg" for i in range(4)]
    np.testing.assert_array_equal(r.scores, [5, 6, 7, 8])


def test_reference_embeddings_aadb_labels_and_errors(tmp_path):
    emb = np.ones((3, D), np.float32)
    paths = [f"/x/aadb/{c}.jpg" for c in "abc"]
    base = _save(tmp_path / "aadb", "aadb_x", emb, paths)
    (tmp_path / "aadb" / "labels.json").write_text(json.dumps({p: i / 10 for i, p in enumerate(paths)}))
    np.testing.assert_allclose(load_reference_embeddings(base).scores, [0, 0.1, 0.2])

    bad = _save(tmp_path / "bad", "n", emb, paths[:2])
    with pytest.raises(DatasetError, match="2 paths"):
        load_reference_embeddings(bad)
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_reference_embeddings(tmp_path / "nothere")
    # pickled objects are refused (weights_only=True)
    d = tmp_path / "evil"
    d.mkdir()
    torch.save({"x": object()}, d / "e.pt")
    (d / "e.json").write_text(json.dumps({"results_paths": []}))
    with pytest.raises(DatasetError, match="weights_only"):
        load_reference_embeddings(d / "e")


def test_align_by_trailing_components(tmp_path):
    emb = np.arange(4 * D, dtype=np.float32).reshape(4, D)
    paths = ["/a/Train_Dist/A_1.bmp", "/a/Train_Ref/A.bmp", "/a/x/1.jpg", "/a/y/1.jpg"]
    r = load_reference_embeddings(_save(tmp_path / "p", "p", emb, paths))
    ours = ["/data/PIPAL/Train_Ref/A.bmp", "/data/y/1.jpg", "/data/PIPAL/Train_Dist/A_1.bmp"]
    np.testing.assert_array_equal(align(r, ours), [1, 3, 0])
    with pytest.raises(DatasetError, match="no unique match"):
        align(r, ["/data/z/2.jpg"])


class ContentScorer(FakeScorer):
    """Embeds a file as a deterministic function of its *bytes* (what a real encoder sees)."""

    @staticmethod
    def vec(p):
        import hashlib

        seed = int.from_bytes(hashlib.sha256(Path(p).read_bytes()).digest()[:4], "little")
        return np.random.RandomState(seed).randn(D).astype(np.float32)

    def embed(self, images, errors="raise"):
        self.calls.append(list(images))
        return SimpleNamespace(values=np.stack([self.vec(p) for p in images]),
                               errors=[None] * len(images))


def test_same_size_rewrite_with_mtime_restored_is_embedded_again(tmp_path, monkeypatch):
    """Issue 17 #22: an image rewritten in place, same size, its mtime put back with
    os.utime, must not be served from the cache (the old key was (size, mtime_ns))."""
    import os
    import time

    monkeypatch.setenv("QUASAR_HOME", str(tmp_path / "home"))
    s = _samples(tmp_path / "ds", 6)
    for i, p in enumerate(s.paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes([i]) * 64)
    first = E.dataset_embeddings(ContentScorer(), s, chunk_size=3, progress=False)
    target = s.paths[4]
    st = os.stat(target)
    time.sleep(0.05)  # past the kernel's coarse clock tick, as any real rewrite later would be
    with open(target, "r+b") as f:  # in place: same inode, same size, other bytes
        f.write(b"\xff" * 64)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(target)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns,
                                                                 st.st_ino)
    sc = ContentScorer()
    got = E.dataset_embeddings(sc, s, chunk_size=3, progress=False)
    expected = np.stack([ContentScorer.vec(p) for p in s.paths])  # from the bytes on disk now
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got[4], first[4])
    assert sc.calls == [[str(p) for p in s.paths[3:6]]]  # only the stale chunk, the other reused
