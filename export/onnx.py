"""torch image tower -> ONNX (``pixels`` -> ``embedding``), then ONNX Runtime vs torch parity.

Exporter: the legacy TorchScript exporter (``dynamo=False``) by default — fast, and exact
for every catalogue model under 2 GB; models whose weights exceed ~2 GB (ViT-H, ViT-bigG)
go through the dynamo exporter, which writes ONNX external data (``encoder.onnx.data``).
If the chosen exporter fails, the other one is tried.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from quasar.errors import ExportError
from quasar.constants import ENCODER_ONNX, INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

OPSET = 17  # legacy exporter
DYNAMO_OPSET = 18
PROTO_LIMIT_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom
MIN_COSINE = 0.99999
REL_TOL = 1e-4  # max |onnx - torch| <= REL_TOL * max |torch embedding|

# (N, H, W) parity cases.
FIXED_CASES: Tuple[Tuple[int, int, int], ...] = ((1, 224, 224), (2, 224, 224), (3, 224, 224))
DYNAMIC_CASES: Tuple[Tuple[int, int, int], ...] = FIXED_CASES + (
    (2, 320, 256), (1, 250, 333), (1, 768, 1024),
)


@dataclass(frozen=True)
class OnnxExport:
    """Result of :func:`export_onnx`."""

    path: Path
    opset: int
    exporter: str  # "torchscript" | "dynamo"
    external_data: Optional[str]  # file name of the external data next to ``path``
    seconds: float


@contextlib.contextmanager
def _export_context():
    """No MHA fastpath (fused op does not export), quiet exporter warnings."""
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                yield
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())


def _export_torchscript(model: nn.Module, sample: torch.Tensor, path: Path,
                        dynamic_hw: bool) -> None:
    axes = {0: "batch"}
    if dynamic_hw:
        axes.update({2: "height", 3: "width"})
    torch.onnx.export(
        model, (sample,), str(path), dynamo=False, opset_version=OPSET,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
    )


def _export_dynamo(model: nn.Module, sample: torch.Tensor, path: Path,
                   dynamic_hw: bool) -> None:
    from torch.export import Dim

    shapes = {0: Dim("batch", min=1, max=4096)}
    if dynamic_hw:
        shapes.update({2: Dim("height", min=32, max=8192), 3: Dim("width", min=32, max=8192)})
    program = torch.onnx.export(
        model, (sample,), dynamo=True, opset_version=DYNAMO_OPSET,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes={"pixels": shapes} if _first_arg_name(model) == "pixels"
        else (shapes,),
        optimize=True, verbose=False,
    )
    program.save(str(path), external_data=param_bytes(model) > PROTO_LIMIT_BYTES)


def _first_arg_name(model: nn.Module) -> str:
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    return params[0] if params else ""


def _external_data_name(path: Path) -> Optional[str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    names = set()
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                names.add(entry.value)
    if not names:
        return None
    if len(names) > 1:
        raise ExportError(f"{path}: external data spread over {len(names)} files; expected one")
    return names.pop()


def export_onnx(model: nn.Module, out_dir: Path, *, dynamic_hw: bool, input_size: int = 224,
                exporter: str = "auto", file_name: str = ENCODER_ONNX) -> OnnxExport:
    """Export ``model`` to ``out_dir/file_name`` and run ``onnx.checker`` on it.

    ``exporter``: ``auto`` (TorchScript under 2 GB, dynamo above), ``torchscript``, ``dynamo``.
    The trace uses batch 2 (a batch-1 trace can freeze the batch axis).
    """
    import onnx

    out_dir = Path(out_dir)
    path = out_dir / file_name
    model = model.eval()
    big = param_bytes(model) > PROTO_LIMIT_BYTES
    order = {"auto": ["dynamo", "torchscript"] if big else ["torchscript", "dynamo"],
             "torchscript": ["torchscript"], "dynamo": ["dynamo"]}.get(exporter)
    if order is None:
        raise ValueError(f"exporter must be auto, torchscript or dynamo, not {exporter!r}")
    gen = torch.Generator().manual_seed(1234)
    sample = torch.randn(2, 3, input_size, input_size, generator=gen)
    errors: List[str] = []
    for name in order:
        if name == "torchscript" and big:
            errors.append("torchscript: model over 2 GB needs external data (dynamo only)")
            continue
        _clean(out_dir, file_name)
        t0 = time.perf_counter()
        try:
            with _export_context():
                if name == "torchscript":
                    _export_torchscript(model, sample, path, dynamic_hw)
                else:
                    _export_dynamo(model, sample, path, dynamic_hw)
            onnx.checker.check_model(str(path))
        except Exception as err:  # try the other exporter
            log.warning("%s exporter failed: %s: %s", name, type(err).__name__, str(err)[:300])
            errors.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
            _clean(out_dir, file_name)
            continue
        seconds = time.perf_counter() - t0
        proto = onnx.load(str(path), load_external_data=False)
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                     None)
        ext = _external_data_name(path)
        log.info("exported %s with %s exporter (opset %s) in %.1f s", path, name, opset, seconds)
        return OnnxExport(path, int(opset), name, ext, seconds)
    raise ExportError("ONNX export failed with every exporter: " + " | ".join(errors))


def _clean(out_dir: Path, file_name: str) -> None:
    for p in Path(out_dir).glob(file_name + "*"):
        if p.is_file():
            p.unlink()


def parity_cases(dynamic_hw: bool, input_size: int = 224) -> List[Tuple[int, int, int]]:
    if dynamic_hw:
        return list(DYNAMIC_CASES)
    return [(n, input_size, input_size) for n, _, _ in FIXED_CASES]


def check_parity(model: nn.Module, onnx_path: Path, *, dynamic_hw: bool, input_size: int = 224,
                 cases: Optional[Sequence[Tuple[int, int, int]]] = None, seed: int = 0,
                 threads: Optional[int] = None) -> Dict[str, Any]:
    """Run ONNX Runtime (CPU) and ``model`` on random pixels of each (N, H, W) case.

    Passes when every case has cosine >= MIN_COSINE and max abs diff <= REL_TOL *
    max|torch embedding|; otherwise raises ExportError carrying the report.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if Path(onnx_path).with_name(Path(onnx_path).name + ".data").exists():
        # big models: do not keep a second, pre-packed copy of the weights in memory
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        opts.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    report_cases = []
    ok = True
    for n, h, w in cases or parity_cases(dynamic_hw, input_size):
        x = torch.randn(n, 3, h, w, generator=gen)
        with _export_context():
            ref = model(x).float().numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape} != torch {ref.shape} for "
                              f"input {(n, 3, h, w)}")
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        scale = float(np.abs(ref).max())
        cos = _cosine(got, ref)
        tol = REL_TOL * scale
        passed = bool(cos >= MIN_COSINE and diff <= tol)
        ok &= passed
        report_cases.append({"shape": [n, 3, h, w], "max_abs_diff": diff,
                             "max_abs_embedding": scale, "tolerance": tol,
                             "min_cosine": cos, "passed": passed})
        log.info("parity %s: max|diff| %.3g (tol %.3g), min cos %.8f", (n, 3, h, w), diff, tol,
                 cos)
    report = {
        "provider": "CPUExecutionProvider",
        "onnxruntime": ort.__version__,
        "criteria": {"min_cosine": MIN_COSINE, "max_abs_diff_rel": REL_TOL},
        "cases": report_cases,
        "max_abs_diff": max(c["max_abs_diff"] for c in report_cases),
        "min_cosine": min(c["min_cosine"] for c in report_cases),
        "passed": ok,
    }
    if not ok:
        bad = [c for c in report_cases if not c["passed"]]
        raise ExportError(
            f"ONNX-vs-torch parity failed for {onnx_path.name}: "
            + "; ".join(f"{c['shape']}: max|diff| {c['max_abs_diff']:.3g} > tol "
                        f"{c['tolerance']:.3g} or cos {c['min_cosine']:.7f} < {MIN_COSINE}"
                        for c in bad)
            + ". Nothing was written. Try --exporter dynamo or report the model."
        )
    return report


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).reshape(a.shape[0], -1)
    b = b.astype(np.float64).reshape(b.shape[0], -1)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    den = np.where(den == 0, 1.0, den)
    return float((num / den).min())
