"""``quasar optimize``: reduced-precision encoder variants, gated on score agreement with fp32.

Reduced precision changes embeddings, so a variant is only kept after it has been measured
against the bundle's fp32 encoder on **held-out images of the user's own data** (never the
calibration images): min / median embedding cosine, max and p99 |Δscore| per anchor set, and
SRCC / KRCC between the fp32 and the variant scores. The variant is written into the bundle
only when every anchor set has SRCC >= ``min_srcc`` (0.999) and p99 |Δscore| <=
``max_p99_dscore`` (0.01); otherwise the bundle is left byte-for-byte unchanged. The report
is printed and stored either way: inside the variant's folder when it passed, beside the
bundle (``<bundle>.<variant>.refused.json``) when it did not.

Variants (``variants/<name>/`` in the bundle, recorded in ``bundle.json`` ``variants``):

=============  =========================================================================
int8 openvino  NNCF post-training quantisation of the OpenVINO model (``ModelType.TRANSFORMER``
               for ViTs: attention, LayerNorm and GELU stay in higher precision); the
               fastest path on a VNNI CPU. Needs ``quasar-iqa[openvino]`` (+ nncf to build).
int8 onnxruntime  ONNX Runtime static QDQ: U8 activations / S8 per-channel weights (S8
               activations gave no speed-up), only Conv / MatMul / Gemm with a weight
               quantised; activation x activation MatMuls (attention) stay fp32.
bf16 openvino  the fp32 graph as OpenVINO IR, run with ``INFERENCE_PRECISION_HINT=bf16``
               (needs AVX512_BF16 or AMX to be fast).
fp16 onnxruntime  fp16 weights and activations, float32 inputs / outputs kept, for CUDA;
               measured on CUDA (ONNX Runtime's CPU provider cannot run it).
fast-decode    not a model: DCT-scaled JPEG decoding (``--fast-decode``) with the fp32
               encoder, measured and gated the same way, per resolution.
=============  =========================================================================

The variant is written through :func:`write_variant`, the one place that edits a bundle here.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from quasar.errors import GateRefusedError, ImageDecodeError, VariantError, optional_import
from quasar.bundle import edit_bundle
from quasar.bundle.atomic import atomic_write_text, cleanup_on_signals, remove_path, temp_dir
from quasar.bundle.lock import bundle_lock
from quasar.bundle.manifest import VariantInfo
from quasar.runtime.agreement import (DEFAULT_MAX_P99_DSCORE, DEFAULT_MIN_SRCC, Gate,
                                      agreement_report, format_report)

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
MIN_HOLDOUT = 8
CALIBRATION_BATCH = 8  # images per NNCF calibration sample (see build_int8_openvino)
# Pixels per calibration sample, at most: NNCF materialises every quantised activation of a
# sample at once - at 1024x768, samples of 8 images took RN50's `quasar optimize` past 22 GB
# of RSS (OOM-killed on a 24 GB machine). One sample holds 8 images of 224x224 worth; larger
# images go in smaller samples (one image at native size), with min/max ranges.
CALIBRATION_PIXELS = CALIBRATION_BATCH * 224 * 224
# Held-out and speed batches: the user's batch size, capped at 16 images of 224x224 worth of
# pixels (fp32 RN50 at 1024x768 in batches of 16 holds gigabytes of activations).
EVAL_PIXELS = 16 * 224 * 224
# Below this many held-out images the gate's SRCC is coarse (one swapped neighbour pair of
# n images costs 12 / (n^3 - n): 0.00037 at n = 32) and biased low (the expected sample SRCC
# of n images grows towards the population value with n; docs/precision.md measures it).
RECOMMENDED_HOLDOUT = 100
VARIANTS_DIR = "variants"
# precision -> default backend (the faster one on the build machine, see docs/precision.md)
DEFAULT_BACKENDS = {"int8": "openvino", "bf16": "openvino", "fp16": "onnxruntime"}
BUILDERS_HINT = {  # (precision, backend) -> (the extras that build it, what they bring)
    ("int8", "openvino"): ("optimize,openvino", "(nncf, openvino)"),
    ("bf16", "openvino"): ("openvino", ""),
    ("int8", "onnxruntime"): ("optimize", "(onnx)"),
    ("fp16", "onnxruntime"): ("optimize", "(onnx) and onnxruntime-gpu"),
}


# --------------------------------------------------------------------------- bundle edit

def write_variant(bundle_dir: PathLike, name: str, files: Mapping[str, PathLike],
                  record: VariantInfo) -> Path:
    """Add (or replace) variant ``name`` in a bundle, atomically, through the bundle layer.

    ``files`` maps names relative to ``variants/<name>/`` to the files to copy there;
    ``record.files`` is rewritten to their bundle-relative paths (model file first, in the
    order given). On any failure the bundle is unchanged (:func:`quasar.bundle.edit_bundle`).
    """
    prefix = f"{VARIANTS_DIR}/{name}"
    record = replace(record, files=[f"{prefix}/{k}" for k in files])
    with edit_bundle(bundle_dir) as ed:
        dest = ed.dir / prefix
        if dest.exists():
            shutil.rmtree(dest)  # hard links of the old variant: the bundle keeps its own
        dest.mkdir(parents=True)
        for k, src in files.items():
            shutil.copy2(src, dest / k)
        ed.manifest = replace(ed.manifest, variants={**ed.manifest.variants, name: record})
    return Path(bundle_dir)


# --------------------------------------------------------------------------- images

def _image_list(spec: Union[str, Sequence[str]]) -> List[str]:
    from quasar.runtime.inputs import iter_inputs

    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    paths = sorted(dict.fromkeys(str(p) for p in iter_inputs([str(s) for s in specs])))
    if not paths:
        raise VariantError(f"no images found in {specs} (a folder, a glob or @list.txt)")
    return paths


def split_images(paths: Sequence[str], holdout_fraction: float = 0.5,
                 seed: int = 0) -> Tuple[List[str], List[str]]:
    """(calibration, held out): a seeded permutation of the sorted paths, disjoint."""
    if not 0.0 < float(holdout_fraction) < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    paths = sorted(paths)
    order = np.random.RandomState(int(seed)).permutation(len(paths))
    n_hold = int(round(len(paths) * float(holdout_fraction)))
    hold = sorted(paths[i] for i in order[:n_hold])
    cal = sorted(paths[i] for i in order[n_hold:])
    return cal, hold


def images_sha256(paths: Sequence[str]) -> str:
    """sha256 over the sorted sha256 of each image file's bytes (order and names ignored)."""
    from quasar.bundle import sha256_file

    digests = sorted(sha256_file(p) for p in paths)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _decode_all(loader, paths: Sequence[str]) -> Tuple[List[str], List[np.ndarray]]:
    ok, arrays = [], []
    for p in paths:
        try:
            arrays.append(loader(p))
            ok.append(p)
        except ImageDecodeError as exc:
            log.warning("skipping %s", exc)
    return ok, arrays


def batch_cap(shape: Sequence[int], batch_size: int, max_pixels: Optional[int]) -> int:
    """Images of ``shape`` ([3, H, W]) per batch: ``batch_size``, fewer when their pixels
    exceed ``max_pixels`` (never fewer than one)."""
    if not max_pixels:
        return max(1, int(batch_size))
    return max(1, min(int(batch_size), int(max_pixels) // max(1, shape[-2] * shape[-1])))


def _batches(arrays: Sequence[np.ndarray], batch_size: int,
             max_pixels: Optional[int] = EVAL_PIXELS) -> List[np.ndarray]:
    """Consecutive same-shape runs, cut at ``batch_size`` images and ``max_pixels`` pixels
    (:func:`batch_cap`; native sizes differ)."""
    out: List[np.ndarray] = []
    cur: List[np.ndarray] = []
    for a in arrays:
        if cur and (a.shape != cur[0].shape
                    or len(cur) >= batch_cap(cur[0].shape, batch_size, max_pixels)):
            out.append(np.stack(cur))
            cur = []
        cur.append(a)
    if cur:
        out.append(np.stack(cur))
    return out


def _embed(run, arrays: Sequence[np.ndarray], batch_size: int) -> Tuple[np.ndarray, float]:
    """Embeddings in order and model-only images/s (the pass after one warm-up batch)."""
    batches = _batches(arrays, batch_size)
    if batches:
        run(batches[0])
    t0 = time.perf_counter()
    outs = [np.asarray(run(b), dtype=np.float32) for b in batches]
    dt = time.perf_counter() - t0
    return np.concatenate(outs), (len(arrays) / dt if dt > 0 else float("nan"))


# --------------------------------------------------------------------------- builders

def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return ""


def _is_transformer(bundle) -> bool:
    fam = (bundle.manifest.family or "").lower()
    return "vit" in bundle.model.lower() or "dinov2" in fam or "vit" in fam


def _require(module: str, variant: Tuple[str, str]):
    extra, also = BUILDERS_HINT[variant]
    return optional_import(module, extra, f"building the {variant[0]} {variant[1]} variant",
                           also=also)


def _activation_matmuls(model) -> List[str]:
    """MatMul nodes with no initializer input: attention's QK^T and AV products."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul"
            and not any(i in inits or i in consts for i in n.input)]


def build_int8_onnxruntime(bundle, cal: Sequence[np.ndarray], work: Path) -> Tuple[Dict[str, Path], str, str]:
    """ONNX Runtime static QDQ: U8 activations, S8 per-channel symmetric weights; Conv,
    MatMul, Gemm with weights only; MinMax calibration."""
    onnx = _require("onnx", ("int8", "onnxruntime"))
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "pre.onnx"
    quant_pre_process(str(bundle.encoder_path), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre), load_external_data=False)
    exclude = _activation_matmuls(model)
    del model
    feeds = [{bundle.manifest.encoder.input_name: b}
             for b in _batches(cal, 4, CALIBRATION_PIXELS)]  # MinMax: global extremes

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    out = work / "encoder.onnx"
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                    nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                   "DedicatedQDQPair": True})
    return {"encoder.onnx": out}, "onnxruntime.quantization (static QDQ, U8 act / S8 wt)", \
        _version("onnxruntime")


def _save_ir(ov, model, work: Path) -> Dict[str, Path]:
    xml = work / "encoder.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return {"encoder.xml": xml, "encoder.bin": work / "encoder.bin"}


def build_int8_openvino(bundle, cal: Sequence[np.ndarray], work: Path,
                        ignored=None) -> Tuple[Dict[str, Path], str, str]:
    """NNCF post-training quantisation of the OpenVINO model; transformer mode for ViTs.
    ``ignored``: an ``nncf.IgnoredScope`` kept in fp32 (export/accuracy_control.py)."""
    ov = _require("openvino", ("int8", "openvino"))
    nncf = _require("nncf", ("int8", "openvino"))
    model = ov.Core().read_model(str(bundle.encoder_path))
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # Samples of 8 images (same-shape runs; at native resolution sizes may differ): NNCF's
    # default activation ranges average the per-sample extremes, and one image per sample
    # clips every image above the average - on the bench's RN50 with the head and the first
    # convolution in fp32 the score error was 4.5x larger fed one at a time. Large images go
    # in smaller samples (CALIBRATION_PIXELS: memory), and then the ranges are the extremes
    # over all samples instead: one image per sample with min/max ranges measured as good
    # as samples of 8 with the default (docs/precision.md, "Calibration batches").
    batches = _batches(cal, CALIBRATION_BATCH, CALIBRATION_PIXELS)
    small = min((batch_cap(a.shape, CALIBRATION_BATCH, CALIBRATION_PIXELS) for a in cal),
                default=CALIBRATION_BATCH) < CALIBRATION_BATCH
    kw: Dict[str, Any] = {}
    adv: Dict[str, Any] = {}
    modes = []
    if _is_transformer(bundle):
        kw["model_type"] = nncf.ModelType.TRANSFORMER
        # SmoothQuant off: on random ViT-B-32 it lowered held-out SRCC (0.9986 -> 0.9992 off)
        adv["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=-1)
        modes.append("transformer, no SmoothQuant")
    if small:
        adv["activations_range_estimator_params"] = RangeEstimatorParametersSet.MINMAX
        modes.append(f"min/max ranges, samples of {max(len(b) for b in batches)} image(s)")
    if adv:
        kw["advanced_parameters"] = AdvancedQuantizationParameters(**adv)
    mode = ", ".join(modes) or "default"
    if ignored is not None:
        kw["ignored_scope"] = ignored
    q = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(cal), **kw)
    return _save_ir(ov, q, work), f"nncf PTQ ({mode}) + openvino {_version('openvino')}", \
        _version("nncf")


def build_bf16_openvino(bundle, cal: Sequence[np.ndarray], work: Path) -> Tuple[Dict[str, Path], str, str]:
    """The fp32 graph as OpenVINO IR; bf16 comes from INFERENCE_PRECISION_HINT at run time."""
    ov = _require("openvino", ("bf16", "openvino"))
    model = ov.Core().read_model(str(bundle.encoder_path))
    return _save_ir(ov, model, work), "openvino (INFERENCE_PRECISION_HINT=bf16)", \
        _version("openvino")


def build_fp16_onnxruntime(bundle, cal: Sequence[np.ndarray], work: Path) -> Tuple[Dict[str, Path], str, str]:
    """fp16 weights and activations, float32 graph inputs / outputs kept."""
    onnx = _require("onnx", ("fp16", "onnxruntime"))
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(bundle.encoder_path))
    m16 = convert_float_to_float16(model, keep_io_types=True)
    out = work / "encoder.onnx"
    onnx.save(m16, str(out))
    return {"encoder.onnx": out}, "onnxruntime.transformers.float16 (keep_io_types)", \
        _version("onnxruntime")


BUILDERS = {
    ("int8", "onnxruntime"): build_int8_onnxruntime,
    ("int8", "openvino"): build_int8_openvino,
    ("bf16", "openvino"): build_bf16_openvino,
    ("fp16", "onnxruntime"): build_fp16_onnxruntime,
}


# --------------------------------------------------------------------------- optimize

@dataclass
class OptimizeResult:
    name: str
    passed: bool
    report: Dict[str, Any]
    report_path: Path
    record: Optional[VariantInfo]


@contextlib.contextmanager
def library_noise(verbose: bool):
    """Without ``verbose``, the quantisation libraries' own output is held back: NNCF's
    progress bars and log lines, torch's "No CUDA runtime is found" (logged when NNCF
    imports torch's C++ extension module), Python warnings from their internals. What they
    printed is shown if the build fails. QUASAR's own messages are not affected (its log
    handlers hold the real stderr)."""
    if verbose:
        yield
        return
    import io
    import warnings

    quiet = {name: logging.getLogger(name) for name in ("torch.utils.cpp_extension", "nncf")}
    levels = {name: lg.level for name, lg in quiet.items()}
    for lg in quiet.values():
        lg.setLevel(logging.ERROR)
    ours, own = logging.getLogger("quasar"), None
    if not logging.getLogger().handlers and not ours.handlers:  # else: logging.lastResort,
        own = logging.StreamHandler(sys.stderr)  # which writes to the redirected stderr
        own.setLevel(logging.WARNING)
        ours.addHandler(own)
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), \
                contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        if buf.getvalue().strip():
            print(buf.getvalue().rstrip(), file=sys.stderr)
        raise
    finally:
        for name, lg in quiet.items():
            lg.setLevel(levels[name])
        if own is not None:
            ours.removeHandler(own)


def variant_name(precision: str, backend: str, fast_decode: bool = False,
                 resolution: Optional[str] = None) -> str:
    return f"fast-decode-{resolution}" if fast_decode else f"{precision}-{backend}"


def build_and_measure(bundle_dir: PathLike, *, precision: str = "int8",
                      calibration: Union[str, Sequence[str], None] = None,
                      holdout: Union[str, Sequence[str], None] = None,
                      backend: Optional[str] = None, resolution: Optional[str] = None,
                      holdout_fraction: float = 0.5, gate: Gate = Gate(),
                      fast_decode: bool = False, batch_size: int = 16,
                      threads: Optional[int] = None, seed: int = 0,
                      max_calibration: int = 300, write: bool = True,
                      transform=None, verbose: bool = False) -> OptimizeResult:
    """Build a variant, measure it against fp32 on held-out images, gate it, and write it
    into the bundle when it passes. ``transform(embeddings) -> embeddings`` (tests only)
    perturbs the variant's held-out embeddings before the report, to exercise the gate.
    Returns an :class:`OptimizeResult`; never raises on a refusal (see :func:`optimize`).

    The bundle's lock is held for the whole run (one writer of a bundle at a time: a second
    ``quasar optimize`` / ``quasar anchors`` is refused at once, naming this process); the
    work folder is ``.<bundle>.<pid>-<x>.optimize`` beside the bundle, removed at the end,
    on Ctrl-C / SIGTERM / SIGHUP, and - after a SIGKILL - by the next command that opens the
    bundle."""
    with bundle_lock(bundle_dir), cleanup_on_signals(), library_noise(verbose):
        return _build_and_measure(
            bundle_dir, precision=precision, calibration=calibration, holdout=holdout,
            backend=backend, resolution=resolution, holdout_fraction=holdout_fraction,
            gate=gate, fast_decode=fast_decode, batch_size=batch_size, threads=threads,
            seed=seed, max_calibration=max_calibration, write=write, transform=transform)


def _build_and_measure(bundle_dir: PathLike, *, precision: str, calibration, holdout,
                       backend: Optional[str], resolution: Optional[str],
                       holdout_fraction: float, gate: Gate, fast_decode: bool,
                       batch_size: int, threads: Optional[int], seed: int,
                       max_calibration: int, write: bool, transform) -> OptimizeResult:
    from quasar.runtime.backends import Choice, OpenArgs, open_encoder
    from quasar.bundle import load_bundle
    from quasar.runtime.images import ImageLoader
    from quasar.runtime.scorer import open_bundle_encoder

    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir, verify=True)
    res = str(resolution) if resolution is not None else bundle.manifest.default_resolution
    cfg = bundle.preprocess(res)
    if fast_decode:
        precision, backend = "fp32", "onnxruntime"
        if cfg.resize_mode != "shortest":
            raise VariantError(f"--fast-decode scales JPEG decoding towards the resize target; "
                               f"resolution {res} does not resize, so there is nothing to gain")
    else:
        if precision not in ("int8", "bf16", "fp16"):
            raise VariantError(f"--precision must be int8, bf16 or fp16, got {precision!r}")
        backend = backend or DEFAULT_BACKENDS[precision]
        if (precision, backend) not in BUILDERS:
            raise VariantError(f"no {precision} variant for backend {backend}; available: "
                               + ", ".join(f"{p} on {b}" for p, b in BUILDERS))
    if calibration is None:
        raise VariantError("--calibration DIR|@list.txt is required: images of your own data "
                           "(part of them are held out for the agreement report)")
    paths = _image_list(calibration)
    if holdout is not None:
        cal_paths, hold_paths = paths, _image_list(holdout)
        overlap = set(map(os.path.realpath, cal_paths)) & set(map(os.path.realpath, hold_paths))
        if overlap:
            raise VariantError(f"--holdout shares {len(overlap)} images with --calibration "
                               f"(e.g. {sorted(overlap)[0]}); the agreement must be measured "
                               "on images not used for calibration")
    else:
        cal_paths, hold_paths = split_images(paths, holdout_fraction, seed)
    cal_paths = cal_paths[:int(max_calibration)]
    if len(hold_paths) < MIN_HOLDOUT or (not fast_decode and len(cal_paths) < 1):
        raise VariantError(f"{len(cal_paths)} calibration and {len(hold_paths)} held-out images: "
                           f"need >= 1 and >= {MIN_HOLDOUT} (>= {RECOMMENDED_HOLDOUT} held out recommended); "
                           "pass more images")
    name = variant_name(precision, backend, fast_decode, res)
    exact = ImageLoader(cfg)
    hold_ok, hold_x = _decode_all(exact, hold_paths)
    if len(hold_ok) < MIN_HOLDOUT:
        raise VariantError(f"only {len(hold_ok)} held-out images could be decoded; need "
                           f">= {MIN_HOLDOUT}")
    fp32 = open_bundle_encoder(bundle, Choice(None, "fp32", "onnxruntime", "reference"),
                               device="cpu", threads=threads)
    ref, fp32_speed = _embed(fp32.run, hold_x, batch_size)

    tool, tool_version, files, device, work = "", "", {}, "cpu", None
    try:
        if fast_decode:
            fast = ImageLoader(cfg, fast_decode=True)
            var_x = [fast(p) for p in hold_ok]
            var, var_speed = _embed(fp32.run, var_x, batch_size)
            tool, tool_version = "Pillow Image.draft (DCT-scaled JPEG decoding)", _version("pillow")
        else:
            _, cal_x = _decode_all(exact, cal_paths)
            if not cal_x:
                raise VariantError("no calibration image could be decoded")
            device = "cuda" if precision == "fp16" else "cpu"
            if device == "cuda":
                from quasar.runtime.backends import cuda_usable
                if not cuda_usable():
                    raise VariantError(
                        "fp16 variants run on CUDA and their agreement is measured there; "
                        "this machine's onnxruntime has no CUDA provider (ONNX Runtime's CPU "
                        'provider cannot run fp16 graphs). Run quasar optimize with "quasar-iqa[gpu]" '
                        "on the GPU machine")
            work = temp_dir(bundle_dir.resolve(), "optimize")
            t0 = time.perf_counter()
            files, tool, tool_version = BUILDERS[(precision, backend)](bundle, cal_x, work)
            build_s = time.perf_counter() - t0
            m = bundle.manifest.encoder
            sess = open_encoder(OpenArgs(model_path=Path(next(iter(files.values()))),
                                         input_name=m.input_name, output_name=m.output_name,
                                         precision=precision, device=device, threads=threads),
                                backend)
            var, var_speed = _embed(sess.run, hold_x, batch_size)
            del sess
        if transform is not None:
            var = np.asarray(transform(var), dtype=np.float32)
        report = agreement_report(ref, var, bundle.anchors, gate)
        if not report["passed"] and transform is None and (precision, backend) == ("int8",
                                                                                  "openvino"):
            from quasar.export.accuracy_control import SearchContext, apply_search
            files, tool, var_speed, report = apply_search(SearchContext(
                bundle, cal_x, hold_x, ref, gate, work, batch_size, threads), report, files,
                tool, var_speed)  # the fastest int8 that passes, layers kept in fp32
        report["speed"] = {"fp32_img_s": round(fp32_speed, 2),
                           "variant_img_s": round(var_speed, 2), "batch_size": int(batch_size)}
        if not fast_decode:
            report["build_seconds"] = round(build_s, 1)
        report.update(variant=name, precision=precision, backend=backend, resolution=res,
                      calibration_images=len(cal_paths) if not fast_decode else 0,
                      holdout_images=len(hold_ok), bundle=str(bundle_dir),
                      random_init_weights=bundle.random_init)
        record = VariantInfo(
            precision=precision, backend=backend, files=list(files) or [],
            kind="decode" if fast_decode else "model", device=device, resolution=res,
            tool=tool, tool_version=tool_version,
            calibration_sha256=images_sha256(cal_paths) if not fast_decode else "",
            calibration_count=len(cal_paths) if not fast_decode else 0,
            holdout_sha256=images_sha256(hold_ok), holdout_count=len(hold_ok),
            gate=asdict(gate), passed=bool(report["passed"]), report=report,
            created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if not record.passed or not write:
            path = bundle_dir.resolve().parent / f"{bundle_dir.name}.{name}.refused.json"
            if record.passed:
                path = path.with_name(f"{bundle_dir.name}.{name}.report.json")
            atomic_write_text(path, json.dumps(report, indent=2) + "\n")
            return OptimizeResult(name, record.passed, report, path, record)
        if work is None:
            work = temp_dir(bundle_dir.resolve(), "optimize")
        report_file = work / "agreement.json"
        report_file.write_text(json.dumps(report, indent=2) + "\n")
        write_variant(bundle_dir, name, {**{k: Path(v) for k, v in files.items()},
                                         "agreement.json": report_file}, record)
        # files: model files first, then the report
        return OptimizeResult(name, True, report,
                              bundle_dir / VARIANTS_DIR / name / "agreement.json", record)
    finally:
        if work is not None:
            remove_path(work)


def optimize(bundle: str, precision: str = "int8", calibration: Optional[str] = None,
             holdout: Optional[str] = None, backend: Optional[str] = None,
             resolution: Optional[str] = None, holdout_fraction: float = 0.5,
             min_srcc: float = DEFAULT_MIN_SRCC, max_p99_dscore: float = DEFAULT_MAX_P99_DSCORE,
             fast_decode: bool = False, batch_size: int = 16, threads: Optional[int] = None,
             seed: int = 0, max_calibration: int = 300, verbose: bool = False) -> None:
    """Write a reduced-precision variant into BUNDLE, gated on agreement with fp32.

    The variant is built from calibration images of your own data and measured on held-out
    images (a seeded split of --calibration, or a separate --holdout): min / median embedding
    cosine, max and p99 |dscore| per anchor set, SRCC and KRCC of fp32 vs variant scores. It
    is written into the bundle (variants/<precision>-<backend>/, recorded in bundle.json)
    only when every anchor set has SRCC >= --min-srcc and p99 |dscore| <= --max-p99-dscore;
    otherwise the bundle is left unchanged. The report is printed and stored either way.
    Use the variant with `quasar score --precision int8|bf16|fp16|auto`.

    Args:
        bundle: bundle directory (from quasar export).
        precision: int8 | bf16 | fp16 | auto (each one this machine runs fast).
        calibration: folder, glob or @list.txt of your own images.
        holdout: separate held-out images (default: split --calibration).
        backend: openvino (int8 via NNCF, bf16) | onnxruntime (int8 QDQ, fp16 on CUDA);
            default: openvino for int8 and bf16, onnxruntime for fp16.
        resolution: resolution to calibrate and measure at (default: the bundle's).
        holdout_fraction: share of --calibration held out when no --holdout is given.
        min_srcc: gate: minimum SRCC of fp32 vs variant scores, per anchor set.
        max_p99_dscore: gate: maximum 99th percentile of |score difference|, per anchor set.
        fast_decode: measure and gate DCT-scaled JPEG decoding (--fast-decode) instead of a
            precision variant.
        batch_size: inference batch size of the measurement.
        threads: inference threads.
        seed: seed of the calibration / held-out split.
        max_calibration: at most this many calibration images are used.
    """
    if precision == "auto":  # every precision this machine runs fast, each through here
        kw = {k: v for k, v in locals().items() if k != "precision"}
        from quasar.export.accuracy_control import optimize_auto
        return optimize_auto(optimize, **kw)
    res = build_and_measure(bundle, precision=str(precision), calibration=calibration,
                                holdout=holdout, backend=backend, resolution=resolution,
                                holdout_fraction=holdout_fraction,
                                gate=Gate(float(min_srcc), float(max_p99_dscore)),
                                fast_decode=bool(fast_decode), batch_size=int(batch_size),
                                threads=threads, seed=int(seed),
                                max_calibration=int(max_calibration),
                                verbose=bool(verbose))
    print(format_report(res.name, res.report))
    n_hold = int(res.report.get("holdout_images") or 0)
    if n_hold < RECOMMENDED_HOLDOUT:
        print(f"note: the gate measured SRCC on {n_hold} held-out images; below "
              f"{RECOMMENDED_HOLDOUT} it is coarse and biased low (a variant can be refused by "
              "one swapped pair of near-equal scores) - pass more images (--calibration, "
              "half held out, or --holdout)")
    if res.report.get("random_init_weights"):
        print("note: random-init weights - the agreement says nothing about real weights")
    if res.passed:
        print(f"variant {res.name} written into {bundle}; report: {res.report_path}")
        return
    raise GateRefusedError(f"variant {res.name} refused by its agreement gate; bundle {bundle} "
                           f"unchanged; report: {res.report_path}")
