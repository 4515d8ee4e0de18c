"""ONNX Runtime session: providers, no silent CUDA fallback, threads, missing onnxruntime."""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

import rt_helpers  # noqa: E402

from quasar.errors import DeviceError, MissingDependencyError, QuasarError  # noqa: E402
from quasar.runtime import session as sess_mod  # noqa: E402
from quasar.runtime.session import SessionConfig, active_device, create_session  # noqa: E402

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    pytest.importorskip("onnx")
    p = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    rt_helpers.write_tiny_onnx(p)
    return p


def test_cpu_session_runs(tiny_onnx):
    s = create_session(tiny_onnx, SessionConfig(device="cpu", intra_op_threads=1,
                                                inter_op_threads=1))
    assert s.get_providers() == ["CPUExecutionProvider"] and active_device(s) == "cpu"
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    out = s.run(["embedding"], {"pixels": x})[0]
    np.testing.assert_allclose(out, rt_helpers.tiny_reference_embedding(x), rtol=1e-5, atol=1e-5)


def test_session_options():
    so = sess_mod.session_options(SessionConfig(intra_op_threads=2, inter_op_threads=1))
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this machine has the CUDA provider")
def test_cuda_requested_without_provider(tiny_onnx):
    with pytest.raises(DeviceError) as ei:
        create_session(tiny_onnx, SessionConfig(device="cuda"))
    msg = str(ei.value)
    assert "CUDA" in msg and 'pip install "quasar-iqa[gpu]"' in msg
    assert "pip uninstall -y onnxruntime" in msg


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this machine has the CUDA provider")
def test_auto_falls_back_to_cpu(tiny_onnx):
    s = create_session(tiny_onnx, SessionConfig(device="auto"))
    assert active_device(s) == "cpu"


def test_cuda_provider_listed_but_inactive(tiny_onnx, monkeypatch):
    """onnxruntime-gpu without CUDA libraries lists the provider but falls back to the CPU
    with only a log line: device='cuda' must refuse that, device='auto' accept it."""

    class FakeSession:
        def __init__(self, *a, **k):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    with pytest.raises(DeviceError, match="could not activate the CUDA provider"):
        create_session(tiny_onnx, SessionConfig(device="cuda"))
    assert active_device(create_session(tiny_onnx, SessionConfig(device="auto"))) == "cpu"


def test_bad_device_name():
    with pytest.raises(DeviceError, match="device must be one of"):
        SessionConfig(device="gpu")


def test_onnxruntime_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError) as ei:
        sess_mod.import_onnxruntime()
    assert 'quasar-iqa[cpu]' in str(ei.value) and 'quasar-iqa[gpu]' in str(ei.value)
    assert isinstance(ei.value, ImportError) and isinstance(ei.value, QuasarError)


# ---------------------------------------------------------------- optimised-graph cache
CACHE_DIM = 256  # weights > 1 KiB: they go to the cached external-data file (memory-mapped)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("QUASAR_HOME", str(h))
    monkeypatch.delenv(sess_mod.ORT_CACHE_ENV, raising=False)
    return h


@pytest.fixture(scope="module")
def cache_onnx(tmp_path_factory):
    pytest.importorskip("onnx")
    p = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    rt_helpers.write_tiny_onnx(p, dim=CACHE_DIM)
    return p


def _cpu(**kw) -> SessionConfig:
    return SessionConfig(device="cpu", intra_op_threads=1, inter_op_threads=1, **kw)


def _entries(home):
    root = home / "ort-cache"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def _run(s, x):
    return s.run(["embedding"], {"pixels": x})[0]


def test_cache_stored_then_reused(cache_onnx, home):
    sha = rt_helpers.sha256(cache_onnx)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 13)).astype(np.float32)
    first = create_session(cache_onnx, _cpu(), model_sha256=sha)
    assert first.quasar_ort_cache == "stored"
    [entry] = _entries(home)
    assert (entry / "model.onnx").is_file() and (entry / "model.onnx.data").is_file()
    key = json.loads((entry / "key.json").read_text())
    assert key["model_sha256"] == sha and key["onnxruntime"] == ort.__version__
    assert key["providers"] == ["CPUExecutionProvider"] and key["cpu"]
    assert not list((home / "ort-cache").glob(".*"))  # no temporary directory left behind

    second = create_session(cache_onnx, _cpu(), model_sha256=sha)
    assert second.quasar_ort_cache == "hit"
    assert second._model_path == str(entry / "model.onnx")  # onnxruntime's own record
    plain = create_session(cache_onnx, _cpu(ort_cache=False), model_sha256=sha)
    assert plain.quasar_ort_cache is None and plain._model_path == str(cache_onnx)
    ref = rt_helpers.tiny_reference_embedding(x, CACHE_DIM)
    for s in (first, second):
        np.testing.assert_array_equal(_run(s, x), _run(plain, x))
        np.testing.assert_allclose(_run(s, x), ref, rtol=1e-5, atol=1e-5)
    assert _entries(home) == [entry]


def test_cache_key_changes_with_cpu_and_version(cache_onnx, home, monkeypatch):
    sha = rt_helpers.sha256(cache_onnx)
    create_session(cache_onnx, _cpu(), model_sha256=sha)
    monkeypatch.setattr(sess_mod, "cpu_identity", lambda: "other-cpu")
    assert create_session(cache_onnx, _cpu(), model_sha256=sha).quasar_ort_cache == "stored"
    monkeypatch.setattr(ort, "__version__", "0.0.1")
    assert create_session(cache_onnx, _cpu(), model_sha256=sha).quasar_ort_cache == "stored"
    assert len(_entries(home)) == 3


def test_cpu_identity_is_stable():
    a, b = sess_mod.cpu_identity(), sess_mod.cpu_identity()
    assert a == b and a.startswith(__import__("platform").machine())


@pytest.mark.parametrize("damage", ["garbage_model", "truncated_data", "empty_model"])
def test_corrupt_cache_falls_back(cache_onnx, home, damage, caplog):
    sha = rt_helpers.sha256(cache_onnx)
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 6)).astype(np.float32)
    create_session(cache_onnx, _cpu(), model_sha256=sha)
    [entry] = _entries(home)
    if damage == "garbage_model":
        (entry / "model.onnx").write_bytes(b"not a protobuf at all" * 10)
    elif damage == "truncated_data":
        data = entry / "model.onnx.data"
        data.write_bytes(data.read_bytes()[:100])
    else:
        (entry / "model.onnx").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger=sess_mod.__name__):
        s = create_session(cache_onnx, _cpu(), model_sha256=sha)
    assert s.quasar_ort_cache == "stored"  # rebuilt from the encoder and cached again
    assert "ONNX Runtime cache" in caplog.text and "rebuilding it" in caplog.text
    np.testing.assert_allclose(_run(s, x), rt_helpers.tiny_reference_embedding(x, CACHE_DIM),
                               rtol=1e-5, atol=1e-5)
    assert create_session(cache_onnx, _cpu(), model_sha256=sha).quasar_ort_cache == "hit"


def test_opt_out(cache_onnx, home, monkeypatch):
    sha = rt_helpers.sha256(cache_onnx)
    monkeypatch.setenv("QUASAR_ORT_CACHE", "0")
    assert create_session(cache_onnx, _cpu(), model_sha256=sha).quasar_ort_cache is None
    assert create_session(cache_onnx, _cpu(ort_cache=True), model_sha256=sha) \
        .quasar_ort_cache == "stored"  # the parameter wins over the environment
    monkeypatch.delenv("QUASAR_ORT_CACHE")
    [entry] = _entries(home)
    sess_mod.shutil.rmtree(entry)
    assert create_session(cache_onnx, _cpu(ort_cache=False), model_sha256=sha) \
        .quasar_ort_cache is None
    assert _entries(home) == []


def test_no_cache_without_checksum_or_with_external_data(cache_onnx, home):
    assert create_session(cache_onnx, _cpu()).quasar_ort_cache is None
    sha = rt_helpers.sha256(cache_onnx)
    assert create_session(cache_onnx, _cpu(), model_sha256=sha, external_data=True) \
        .quasar_ort_cache is None
    assert _entries(home) == []


def test_unwritable_home_still_scores(cache_onnx, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("QUASAR_HOME", str(blocker))  # mkdir fails, even as root
    x = np.random.default_rng(2).standard_normal((1, 3, 5, 5)).astype(np.float32)
    s = create_session(cache_onnx, _cpu(), model_sha256=rt_helpers.sha256(cache_onnx))
    assert s.quasar_ort_cache is None
    np.testing.assert_allclose(_run(s, x), rt_helpers.tiny_reference_embedding(x, CACHE_DIM),
                               rtol=1e-5, atol=1e-5)


def test_scorer_uses_cache(tmp_path, home):
    from quasar.runtime import Scorer

    pytest.importorskip("onnx")
    b = rt_helpers.write_tiny_bundle(tmp_path / "b")
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(3)]
    s1 = Scorer.from_bundle(b, device="cpu", resolution="native")
    s2 = Scorer.from_bundle(b, device="cpu", resolution="native")
    s0 = Scorer.from_bundle(b, device="cpu", resolution="native", verify=False)
    assert (s1.session.quasar_ort_cache, s2.session.quasar_ort_cache) == ("stored", "hit")
    [entry] = _entries(home)
    sess_mod.shutil.rmtree(entry)
    s0.session = create_session(b / "encoder.onnx", _cpu(ort_cache=False))
    np.testing.assert_array_equal(s2.score(imgs), s0.score(imgs))
    np.testing.assert_array_equal(s1.score(imgs), s0.score(imgs))


def test_cached_rn50_nopos_matches_uncached(rn50_nopos_bundle, home):
    """The real architecture, dynamic H×W, non-square input: the cached ORT_ENABLE_ALL graph
    must give the uncached session's outputs (measured: identical)."""
    enc = rn50_nopos_bundle / "encoder.onnx"
    sha = json.loads((rn50_nopos_bundle / "bundle.json").read_text())["files"]["encoder.onnx"]
    x = np.random.default_rng(4).standard_normal((2, 3, 96, 160)).astype(np.float32)
    plain = _run(create_session(enc, _cpu(ort_cache=False), model_sha256=sha), x)
    stored = create_session(enc, _cpu(), model_sha256=sha)
    hit = create_session(enc, _cpu(), model_sha256=sha)
    assert (stored.quasar_ort_cache, hit.quasar_ort_cache) == ("stored", "hit")
    scale = float(np.abs(plain).max())
    for s in (stored, hit):
        np.testing.assert_allclose(_run(s, x), plain, rtol=0, atol=1e-6 * scale)


def test_forged_key_json_is_refused(cache_onnx, home, caplog):
    """Issue 17 #21: the cached weights replaced (NaN) and key.json's sha256 and stat
    fingerprints rewritten to match - as a forger would - must not be served: the entry is
    rebuilt from the bundle's encoder and the outputs are the encoder's."""
    import hashlib
    import os

    sha = rt_helpers.sha256(cache_onnx)
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 5)).astype(np.float32)
    create_session(cache_onnx, _cpu(), model_sha256=sha)
    [entry] = _entries(home)
    data = entry / "model.onnx.data"
    n = data.stat().st_size
    data.write_bytes(np.full(n // 4, np.nan, dtype=np.float32).tobytes() + b"\0" * (n % 4))
    key = json.loads((entry / "key.json").read_text())
    for name in key["files"]:  # a consistent forgery: hashes and stats of the new files
        f = entry / name
        key["files"][name] = hashlib.sha256(f.read_bytes()).hexdigest()
        st = os.stat(f)
        key["fingerprints"][name] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                     st.st_ctime_ns]
    (entry / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
    with caplog.at_level(logging.WARNING, logger=sess_mod.__name__):
        s = create_session(cache_onnx, _cpu(), model_sha256=sha)
    assert s.quasar_ort_cache == "stored" and "rebuilding it" in caplog.text
    out = _run(s, x)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, rt_helpers.tiny_reference_embedding(x, CACHE_DIM),
                               rtol=1e-5, atol=1e-5)
    assert create_session(cache_onnx, _cpu(), model_sha256=sha).quasar_ort_cache == "hit"
    secret = home / sess_mod.ORT_CACHE_SECRET
    assert secret.stat().st_mode & 0o777 == 0o600 and secret.parent != entry.parent


def test_entry_is_valid_only_for_the_encoder_that_built_it(cache_onnx, home):
    """An entry copied under the name of another encoder's entry (its key.json edited to
    that encoder's sha256) is refused: the seal is keyed by the verified encoder sha256."""
    import shutil

    sha = rt_helpers.sha256(cache_onnx)
    create_session(cache_onnx, _cpu(), model_sha256=sha)
    [entry] = _entries(home)
    other = "ab" * 32
    ort_mod = sess_mod.import_onnxruntime()
    target, key = sess_mod._cache_entry(ort_mod, str(cache_onnx), other, ["CPUExecutionProvider"])
    shutil.copytree(entry, target)
    stored = json.loads((target / "key.json").read_text())
    stored["model_sha256"] = other
    (target / "key.json").write_text(json.dumps(stored))
    assert sess_mod._verify_cached(target, key) is not None


def test_a_secret_that_is_not_private_is_not_used(cache_onnx, home, caplog):
    """The seal is only as good as its secret: one readable by others or a symlink (a file
    someone else put there) is refused, and the cache then falls back to the bundle."""
    import os

    sha = rt_helpers.sha256(cache_onnx)
    assert create_session(cache_onnx, _cpu(), model_sha256=sha).quasar_ort_cache == "stored"
    secret = home / sess_mod.ORT_CACHE_SECRET
    os.chmod(secret, 0o644)
    x = np.random.default_rng(5).standard_normal((1, 3, 4, 4)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger=sess_mod.__name__):
        s = create_session(cache_onnx, _cpu(), model_sha256=sha)
    assert s.quasar_ort_cache != "hit" and "0600" in caplog.text
    np.testing.assert_allclose(_run(s, x), rt_helpers.tiny_reference_embedding(x, CACHE_DIM),
                               rtol=1e-5, atol=1e-5)
    mine = home / "mine.key"
    mine.write_bytes(b"k" * 32)
    os.chmod(mine, 0o600)
    secret.unlink()
    secret.symlink_to(mine)
    assert create_session(cache_onnx, _cpu(), model_sha256=sha).quasar_ort_cache != "hit"
