"""ONNX Runtime session: providers, no silent CUDA fallback, threads, missing onnxruntime."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
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
    assert "CUDA" in msg and 'pip install "quasar[gpu]"' in msg
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
    assert 'quasar[cpu]' in str(ei.value) and 'quasar[gpu]' in str(ei.value)
    assert isinstance(ei.value, ImportError) and isinstance(ei.value, QuasarError)
