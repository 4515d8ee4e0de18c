"""Test helpers for the runtime: a tiny hand-made bundle (no torch needed) whose embedding
is simple enough to recompute in numpy, and small image files of many kinds."""
from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from quasar.bundle.manifest import BundleManifest, EncoderInfo
from quasar.models.preprocess import resolution_cfg

TINY_DIM = 8


def tiny_weights(dim: int = TINY_DIM, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((3, dim)).astype(np.float32),
            rng.standard_normal(dim).astype(np.float32))


def tiny_reference_embedding(pixels: np.ndarray, dim: int = TINY_DIM) -> np.ndarray:
    """What the tiny encoder computes, in float64: mean over H, W -> @ W + b."""
    w, b = tiny_weights(dim)
    return pixels.astype(np.float64).mean(axis=(2, 3)) @ w.astype(np.float64) + b


def write_tiny_onnx(path: Path, dim: int = TINY_DIM, fixed: Optional[int] = None) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = tiny_weights(dim)
    hw = [fixed, fixed] if fixed else ["H", "W"]
    nodes = [
        helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3] + hw)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def tiny_anchor_sets(dim: int = TINY_DIM) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"text": unit(rng.standard_normal((2, dim))),
            "kadis": unit(rng.standard_normal((2, dim)))}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tiny_bundle(out: Path, *, dim: int = TINY_DIM, fixed: Optional[int] = None,
                      anchors: Optional[Dict[str, np.ndarray]] = None,
                      random_init: bool = False, schema_version: int = 1) -> Path:
    """A complete bundle directory with the tiny encoder (dynamic H×W unless ``fixed``)."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    write_tiny_onnx(out / "encoder.onnx", dim, fixed)
    sets = tiny_anchor_sets(dim) if anchors is None else anchors
    save_file({k: np.ascontiguousarray(v) for k, v in sets.items()},
              str(out / "anchors.safetensors"),
              metadata={k: json.dumps({"kind": k, "test": True}) for k in sets})
    res = ("224",) if fixed else ("224", "512", "native")
    manifest = BundleManifest(
        model="tiny.test", family="open_clip",
        encoder=EncoderInfo(embed_dim=dim, dynamic_hw=fixed is None, input_size=fixed),
        preprocess={r: resolution_cfg(r) for r in res}, default_resolution="224",
        anchors=list(sets), provenance={"random_init": random_init},
        files={n: sha256(out / n) for n in ("encoder.onnx", "anchors.safetensors")},
        schema_version=schema_version,
    )
    (out / "bundle.json").write_text(manifest.to_json())
    return out


def rewrite_manifest(bundle: Path, **changes) -> None:
    d = json.loads((bundle / "bundle.json").read_text())
    d.update(changes)
    (bundle / "bundle.json").write_text(json.dumps(d))


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width×height (no real pixel data): enough for Pillow's
    decompression-bomb check, which runs on the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@contextlib.contextmanager
def moto_server():
    """moto's S3 server on 127.0.0.1 (a free port); yields its endpoint URL. Skips the test
    when s3fs or moto is not installed."""
    import logging

    import pytest

    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server._server.server_address
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def forget_s3_filesystems() -> None:
    """A new endpoint / credentials: our per-process filesystems and fsspec's instance cache
    (which keys on arguments, not on the environment) both forgotten."""
    import s3fs

    _forget(s3fs.S3FileSystem)


def _forget(fs_class) -> None:
    """Our per-process filesystems and ``fs_class``'s fsspec instance cache forgotten."""
    from quasar.runtime import storage

    storage.reset_filesystems()
    fs_class.clear_instance_cache()


@contextlib.contextmanager
def s3_bucket(monkeypatch, endpoint: str, bucket: str):
    """An empty store on the moto server at ``endpoint`` (moto's backends are global to the
    process: reset before and after) holding only ``bucket``, the standard AWS settings
    pointing at it; yields a boto3 client."""
    import urllib.request

    import boto3
    from s3fs import S3FileSystem  # held: a test may hide the module before the teardown

    def reset():
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset",
                                                      method="POST")).read()

    for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    reset()
    _forget(S3FileSystem)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    try:
        yield client
    finally:
        _forget(S3FileSystem)
        reset()


@contextlib.contextmanager
def gcs_emulator(monkeypatch, bucket: str):
    """gcp-storage-emulator on 127.0.0.1 with ``bucket``, gcsfs pointed at it through its own
    setting (STORAGE_EMULATOR_HOST); yields a fresh ``GCSFileSystem``. Skips the test when
    gcsfs or the emulator is not installed."""
    import pytest

    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # no gRPC bucket probe
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    gcsfs = pytest.importorskip("gcsfs")
    emulator = pytest.importorskip("gcp_storage_emulator.server")

    server = emulator.create_server("127.0.0.1", 0, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        port = server._api._httpd.server_address[1]
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        _forget(gcsfs.GCSFileSystem)
        yield gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
    finally:
        _forget(gcsfs.GCSFileSystem)
        server.stop()
