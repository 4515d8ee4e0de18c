"""Bundle loading and validation: every problem is a BundleError naming the file and fix."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

import rt_helpers  # noqa: E402

from quasar.errors import BundleError  # noqa: E402
from quasar.bundle.io import load_bundle, sha256_file  # noqa: E402

pytest.importorskip("onnx")


@pytest.fixture()
def tiny(tmp_path):
    return rt_helpers.write_tiny_bundle(tmp_path / "tiny")


def test_loads_tiny_bundle(tiny):
    b = load_bundle(tiny)
    assert b.model == "tiny.test" and b.embed_dim == rt_helpers.TINY_DIM
    assert b.anchor_names == ["text", "kadis"]
    for name, a in rt_helpers.tiny_anchor_sets().items():
        assert b.anchors[name].dtype == np.float32
        np.testing.assert_array_equal(b.anchors[name], a)
        assert b.recipes[name] == {"kind": name, "test": True}
    assert b.encoder_path == tiny / "encoder.onnx"
    assert b.preprocess("native").resize_mode == "none"
    with pytest.raises(BundleError, match="resolutions"):
        b.preprocess("1024")


def test_sha256_streams_in_chunks(tiny):
    import hashlib
    p = tiny / "encoder.onnx"
    assert sha256_file(p, chunk=7) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_tampered_encoder(tiny):
    p = tiny / "encoder.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"encoder.onnx: sha256 mismatch.*re-export"):
        load_bundle(tiny)
    load_bundle(tiny, verify=False)  # the opt-out skips checksums only


def test_missing_files(tiny):
    (tiny / "anchors.safetensors").unlink()
    with pytest.raises(BundleError, match=r"anchors.safetensors: missing"):
        load_bundle(tiny, verify=False)
    with pytest.raises(BundleError, match="no such bundle directory"):
        load_bundle(tiny / "nope")
    with pytest.raises(BundleError, match="is a directory"):
        load_bundle(tiny / "encoder.onnx")
    (tiny / "bundle.json").unlink()
    with pytest.raises(BundleError, match=r"bundle.json: missing.*not a QUASAR bundle"):
        load_bundle(tiny)


def test_newer_schema(tmp_path):
    b = rt_helpers.write_tiny_bundle(tmp_path / "b", schema_version=99)
    with pytest.raises(BundleError, match=r"schema version 99 is newer.*upgrade quasar"):
        load_bundle(b)


def test_malformed_manifest(tiny):
    (tiny / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"bundle.json: not valid JSON"):
        load_bundle(tiny)
    (tiny / "bundle.json").write_text(json.dumps({"schema_version": 1, "model": "x"}))
    with pytest.raises(BundleError, match=r"bundle.json: malformed manifest"):
        load_bundle(tiny)


def test_file_entry_outside_bundle(tiny):
    d = json.loads((tiny / "bundle.json").read_text())
    d["files"]["../evil"] = "0" * 64
    (tiny / "bundle.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(tiny)


@pytest.mark.parametrize("bad, match", [
    (np.ones((2, 5), np.float32) / np.sqrt(5), r"shape \[2, 5\], expected \[2, 8\]"),
    (np.ones((3, 8), np.float32) / np.sqrt(8), r"shape \[3, 8\]"),
    (np.full((2, 8), np.nan, np.float32), "NaN"),
    (np.ones((2, 8), np.float32), "not unit-norm"),
])
def test_bad_anchors(tmp_path, bad, match):
    sets = rt_helpers.tiny_anchor_sets()
    sets["broken"] = bad
    b = rt_helpers.write_tiny_bundle(tmp_path / "b", anchors=sets)
    with pytest.raises(BundleError, match=r"anchors.safetensors: anchor set 'broken'.*" + match):
        load_bundle(b)


def test_anchor_listed_but_absent(tiny):
    d = json.loads((tiny / "bundle.json").read_text())
    d["anchors"].append("ava")
    (tiny / "bundle.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=r"\['ava'\].*missing"):
        load_bundle(tiny)


def test_random_init_warns(tmp_path, caplog, monkeypatch):
    import quasar.bundle.io as bundle_io

    monkeypatch.setattr(bundle_io, "_ANNOUNCED", set())  # said once per bundle per process
    b = rt_helpers.write_tiny_bundle(tmp_path / "b", random_init=True)
    with caplog.at_level(logging.WARNING, logger="quasar.bundle.io"):
        load_bundle(b)
    assert any("RANDOMLY INITIALISED" in r.message and "NO quality meaning" in r.message
               for r in caplog.records)


@pytest.mark.torch
def test_exported_bundle_loads(rn50_nopos_bundle, tmp_path):
    b = load_bundle(rn50_nopos_bundle)
    assert b.model == "clip-rn50-nopos.openai" and b.embed_dim == 1024
    assert b.anchors["text"].shape == (2, 1024) and b.random_init
    assert set(b.manifest.preprocess) == {"224", "512", "native"}
    # wrong-dim anchors: anchors of another model copied into this bundle
    copy = tmp_path / "copy"
    shutil.copytree(rn50_nopos_bundle, copy)
    from safetensors.numpy import save_file
    save_file({"text": rt_helpers.unit(np.ones((2, 512), np.float32))},
              str(copy / "anchors.safetensors"), metadata={"text": "{}"})
    d = json.loads((copy / "bundle.json").read_text())
    d["files"]["anchors.safetensors"] = rt_helpers.sha256(copy / "anchors.safetensors")
    (copy / "bundle.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=r"shape \[2, 512\], expected \[2, 1024\].*another "
                                          "encoder"):
        load_bundle(copy, verify=False)
