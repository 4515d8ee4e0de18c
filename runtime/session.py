"""ONNX Runtime session for an encoder: provider choice, threads, graph optimisation.

``device="cuda"`` never falls back silently: when the CUDA execution provider is not
installed, or ONNX Runtime could not activate it (CUDA/cuDNN libraries missing), a
:class:`DeviceError` says how to fix the install. ``device="auto"`` uses CUDA when it works
and the CPU otherwise.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Union

from quasar.errors import BundleError, DeviceError, MissingDependencyError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

GPU_INSTALL_HINT = (
    'install the GPU build: pip uninstall -y onnxruntime && pip install "quasar[gpu]" '
    "(onnxruntime-gpu; never keep onnxruntime and onnxruntime-gpu installed together - they "
    "overwrite each other and the CUDA provider disappears), and make sure the CUDA and cuDNN "
    "libraries that onnxruntime-gpu needs are installed; or use device='cpu'"
)


def import_onnxruntime() -> Any:
    """``import onnxruntime`` with an install hint when it is missing."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            "onnxruntime is not installed; the QUASAR runtime needs it: "
            'pip install "quasar[cpu]" (CPU) or pip install "quasar[gpu]" (CUDA) - not both'
        ) from exc
    return onnxruntime


@dataclass(frozen=True)
class SessionConfig:
    """How to run an encoder: ``device`` auto|cpu|cuda, CUDA ``device_id``, thread counts
    (None = ONNX Runtime's default: one intra-op thread per physical core)."""

    device: str = "auto"
    device_id: int = 0
    intra_op_threads: Optional[int] = None
    inter_op_threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise DeviceError(f"device must be one of {DEVICES}, got {self.device!r}")
        for name in ("intra_op_threads", "inter_op_threads"):
            v = getattr(self, name)
            if v is not None and int(v) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = ONNX Runtime default), got {v}")


def session_options(cfg: SessionConfig) -> Any:
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if cfg.intra_op_threads is not None:
        so.intra_op_num_threads = int(cfg.intra_op_threads)
    if cfg.inter_op_threads is not None:
        so.inter_op_num_threads = int(cfg.inter_op_threads)
    so.log_severity_level = 3  # errors only: provider fallbacks are checked explicitly below
    return so


def _providers(cfg: SessionConfig) -> List[Any]:
    return [(CUDA_EP, {"device_id": int(cfg.device_id)}), CPU_EP]


def _new_session(ort: Any, model: str, so: Any, providers: List[Any]) -> Any:
    try:
        return ort.InferenceSession(model, sess_options=so, providers=providers)
    except Exception as exc:
        msg = str(exc)
        if any(k in msg for k in ("CUDA", "cuda", "cudnn", "CUBLAS")) and \
                any(p == CUDA_EP or (isinstance(p, tuple) and p[0] == CUDA_EP) for p in providers):
            raise DeviceError(f"cannot start the CUDA provider for {model}: {msg}; "
                              f"{GPU_INSTALL_HINT}") from exc
        raise BundleError(f"{model}: ONNX Runtime cannot load this encoder ({msg}); "
                          "re-export the bundle with `quasar export`") from exc


def create_session(model_path: Union[str, Path], cfg: SessionConfig = SessionConfig()) -> Any:
    """An ``onnxruntime.InferenceSession`` on the device ``cfg`` asks for."""
    ort = import_onnxruntime()
    model = str(model_path)
    so = session_options(cfg)
    available = ort.get_available_providers()
    if cfg.device == "cpu":
        return _new_session(ort, model, so, [CPU_EP])
    if cfg.device == "cuda":
        if CUDA_EP not in available:
            raise DeviceError(
                f"device='cuda' was requested but this onnxruntime ({ort.__version__}) has no "
                f"CUDA execution provider (available: {', '.join(available)}); {GPU_INSTALL_HINT}"
            )
        sess = _new_session(ort, model, so, _providers(cfg))
        if sess.get_providers()[0] != CUDA_EP:
            raise DeviceError(
                f"device='cuda' was requested but ONNX Runtime could not activate the CUDA "
                f"provider on device {cfg.device_id} (active: {', '.join(sess.get_providers())}); "
                f"{GPU_INSTALL_HINT}"
            )
        return sess
    # auto
    if CUDA_EP in available:
        try:
            sess = _new_session(ort, model, so, _providers(cfg))
            if sess.get_providers()[0] == CUDA_EP:
                return sess
            log.warning("CUDA provider is installed but inactive (CUDA/cuDNN libraries "
                        "missing?); running on the CPU. %s", GPU_INSTALL_HINT)
        except DeviceError as exc:
            log.warning("%s; running on the CPU", exc)
    return _new_session(ort, model, so, [CPU_EP])


def active_device(session: Any) -> str:
    """``cuda`` or ``cpu``: where ``session`` actually runs."""
    return "cuda" if session.get_providers()[0] == CUDA_EP else "cpu"
