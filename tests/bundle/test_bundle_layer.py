"""The bundle layer: atomic writes, editing a bundle (anchor sets), and what it refuses."""
from __future__ import annotations

import hashlib
import json
import os
import threading

import numpy as np
import pytest

import rt_helpers
from quasar.bundle import add_anchor_set, edit_bundle, load_bundle
from quasar.bundle.anchors import read_anchor_file
from quasar.bundle.atomic import atomic_dir, atomic_output, atomic_write, atomic_write_text
from quasar.errors import BundleError

D = rt_helpers.TINY_DIM


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def bundle(tmp_path):
    pytest.importorskip("onnx")
    return rt_helpers.write_tiny_bundle(tmp_path / "b")


# ------------------------------------------------------------------------------ atomic
def test_atomic_write_all_or_nothing(tmp_path):
    p = tmp_path / "out.txt"
    atomic_write_text(p, "first\n")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert p.read_text() == "first\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.txt"]  # no temp left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask


def test_atomic_writers_side_by_side_use_unique_temp_names(tmp_path):
    p = tmp_path / "x.bin"
    seen, errors = [], []

    def write(i):
        try:
            with atomic_output(p) as tmp:
                seen.append(tmp)
                tmp.write_bytes(bytes([i]) * 1000)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(seen)) == 8
    data = p.read_bytes()
    assert len(data) == 1000 and len(set(data)) == 1  # one whole file won, never a mix
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.bin"]


def test_atomic_dir_leaves_nothing_on_failure_and_refuses_existing(tmp_path):
    target = tmp_path / "d"
    with pytest.raises(ValueError):
        with atomic_dir(target) as work:
            (work / "f").write_text("x")
            raise ValueError("fail")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as work:
        (work / "f").write_text("x")
    assert (target / "f").read_text() == "x"
    with pytest.raises(FileExistsError):
        with atomic_dir(target) as work:
            pass
    with atomic_dir(target, overwrite=True) as work:
        (work / "g").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# ------------------------------------------------------------------------------ edit
def test_add_anchor_set_writes_through_the_manifest(bundle, tmp_path):
    before = read_anchor_file(bundle / "anchors.safetensors")[0]
    new = np.random.RandomState(1).randn(2, D)
    add_anchor_set(bundle, "mine", new, {"source": "images", "seed": 3})
    b = load_bundle(bundle)  # verifies every checksum
    assert b.anchor_names == ["text", "kadis", "mine"]
    np.testing.assert_allclose(b.anchors["mine"], _unit(new), atol=1e-6)
    np.testing.assert_array_equal(b.anchors["text"], before["text"])
    assert b.recipes["mine"] == {"source": "images", "seed": 3}
    m = json.loads((bundle / "bundle.json").read_text())
    assert m["files"]["anchors.safetensors"] == _sha(bundle / "anchors.safetensors")
    assert m["model"] == "tiny.test" and "preprocess" in m  # the whole manifest kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staged copy left
    add_anchor_set(bundle, "mine", -new, {"seed": 4}, overwrite=True)  # replace
    b = load_bundle(bundle)
    assert b.anchor_names == ["text", "kadis", "mine"]
    np.testing.assert_allclose(b.anchors["mine"], _unit(-new), atol=1e-6)


def test_edit_refuses_bad_sets_and_tampered_bundles(bundle):
    before = _snapshot(bundle)
    with pytest.raises(BundleError, match=rf"\[2, {D}\]"):
        add_anchor_set(bundle, "x", np.ones((2, D + 1)), {})
    with pytest.raises(ValueError, match="name"):
        add_anchor_set(bundle, "../evil", np.ones((2, D)), {})
    with pytest.raises(BundleError):
        add_anchor_set(bundle, "zero", np.zeros((2, D)), {})
    assert _snapshot(bundle) == before
    with open(bundle / "anchors.safetensors", "ab") as f:
        f.write(b" ")
    tampered = _snapshot(bundle)
    with pytest.raises(BundleError, match="sha256"):
        add_anchor_set(bundle, "x", np.ones((2, D)), {})
    assert _snapshot(bundle) == tampered  # a tampered bundle is never re-signed


def test_failure_inside_an_edit_leaves_the_bundle(bundle, tmp_path):
    before = _snapshot(bundle)
    with pytest.raises(OSError, match="disk full"):
        with edit_bundle(bundle) as ed:
            ed.set_anchor_set("new", np.ones((2, D)), {})
            (ed.dir / "encoder.onnx").unlink()  # a half-done change...
            raise OSError("disk full")  # ...then a failure
    assert _snapshot(bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_an_edit_that_breaks_the_bundle_is_not_swapped_in(bundle):
    before = _snapshot(bundle)
    with pytest.raises(BundleError):
        with edit_bundle(bundle) as ed:
            (ed.dir / "stray.bin").write_bytes(b"x")  # fine: it gets a checksum...
            ed.manifest = ed.manifest.__class__(**{**ed.manifest.__dict__, "anchors": ["nope"]})
    assert _snapshot(bundle) == before
