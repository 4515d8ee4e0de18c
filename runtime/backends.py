"""Inference backends behind one session interface, and the choice of a precision variant.

A backend turns a model file into an :class:`EncoderSession` whose ``run(pixels)`` maps
float32 ``[N, 3, H, W]`` to float32 ``[N, D]``. Backends are registered by name
(:data:`BACKENDS`, as rembg registers its sessions):

* ``onnxruntime`` (default): CPU or CUDA; the CPU path keeps the optimised-graph cache of
  :mod:`quasar.runtime.session`; on CUDA the inputs and outputs go through IO binding.
* ``openvino`` (optional, ``pip install "quasar-iqa[openvino]"``): CPU. OpenVINO resolves its
  default inference precision to bf16 on CPUs with AVX512_BF16 / AMX, which would silently
  change the scores, so fp32 and int8 sessions pin ``INFERENCE_PRECISION_HINT`` to f32 and
  only a bf16 variant asks for bf16.

``openvino`` is imported only inside functions: the lean runtime install stays as it is.

**Precision variants** (written by ``quasar optimize``, recorded in ``bundle.json``
``variants`` with the agreement report that gated them) are chosen by
:func:`choose_variant`, a pure function of the bundle's variants, the CPU flags and whether
CUDA is usable: ``auto`` takes the fastest variant that passed its gate *and* that this
hardware runs fast (int8 needs VNNI, bf16 needs AVX512_BF16 or AMX, fp16 needs CUDA), else
fp32. A variant whose gate failed is never used. When several variants qualify,
:func:`choose_by_speed` times each once on this machine (a few batches), caches the figures in
``$QUASAR_HOME/speed`` keyed by the bundle's sha256, the variant, the input shape and the CPU
flags (never inside the bundle: its checksums do not change), and takes the fastest.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import (Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import numpy as np

from quasar.constants import RUNTIME_PRECISIONS  # noqa: F401 (one definition; re-exported)
from quasar.errors import BundleError, VariantError, optional_import

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "onnxruntime"

# Flags (as /proc/cpuinfo spells them) that make each precision fast on a CPU.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# auto: fastest first (measured on the build machine, see docs/precision.md)
AUTO_ORDER = (("fp16", "onnxruntime"), ("int8", "openvino"), ("int8", "onnxruntime"),
              ("bf16", "openvino"))


# --------------------------------------------------------------------------- sessions

class EncoderSession:
    """One loaded encoder: ``run(float32 [N,3,H,W]) -> float32 [N,D]``.

    ``backend``, ``precision`` and ``device`` say what runs; ``raw`` is the backend's own
    session object (an ``onnxruntime.InferenceSession`` or an OpenVINO ``CompiledModel``).
    """

    backend: str = ""
    precision: str = "fp32"
    device: str = "cpu"
    raw: Any = None

    def run(self, pixels: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class OrtEncoderSession(EncoderSession):
    backend = "onnxruntime"

    def __init__(self, sess: Any, input_name: str, output_name: str, precision: str,
                 io_binding: Optional[bool] = None) -> None:
        from .session import active_device

        self.raw = sess
        self.precision = precision
        self.device = active_device(sess)
        self.input_name, self.output_name = input_name, output_name
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        _check_names(sess_inputs=[i.name for i in sess.get_inputs()],
                     sess_outputs=[o.name for o in sess.get_outputs()],
                     input_name=input_name, output_name=output_name,
                     where=getattr(sess, "quasar_model_path", "the encoder"))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        if not self.io_binding:
            return np.asarray(self.raw.run([self.output_name], {self.input_name: x})[0],
                              dtype=np.float32)
        # CUDA: bind the host input once and let ONNX Runtime place the output, so that no
        # intermediate copies are made per call; float32 I/O even for an fp16 graph.
        binding = self.raw.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        binding.bind_output(self.output_name)
        self.raw.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


class OpenVinoEncoderSession(EncoderSession):
    backend = "openvino"

    def __init__(self, compiled: Any, input_name: str, output_name: str,
                 precision: str) -> None:
        self.raw = compiled
        self.precision = precision
        self.device = "cpu"
        self.input_name, self.output_name = input_name, output_name
        ins = [n for p in compiled.inputs for n in p.get_names()]
        outs = [n for p in compiled.outputs for n in p.get_names()]
        _check_names(ins, outs, input_name, output_name, where="the OpenVINO model")
        self._out = next(p for p in compiled.outputs if output_name in p.get_names())
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls are serialised

    def run(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        with self._lock:
            res = self._request.infer({self.input_name: x})
            return np.array(res[self._out], dtype=np.float32, copy=True)


def _check_names(sess_inputs, sess_outputs, input_name, output_name, where) -> None:
    if input_name not in sess_inputs or output_name not in sess_outputs:
        raise BundleError(
            f"{where}: graph inputs {list(sess_inputs)} / outputs {list(sess_outputs)} do not "
            f"match bundle.json ({input_name!r} -> {output_name!r}); re-export the bundle")


# --------------------------------------------------------------------------- backends

@dataclass(frozen=True)
class OpenArgs:
    """What every backend gets: the model file, the names from ``bundle.json``, device,
    threads, the precision it was built for, and the manifest checksum (ORT cache key)."""

    model_path: Path
    input_name: str
    output_name: str
    precision: str = "fp32"
    device: str = "cpu"
    device_id: int = 0
    threads: Optional[int] = None
    model_sha256: Optional[str] = None
    external_data: bool = False


def _open_ort(a: OpenArgs) -> EncoderSession:
    from .session import SessionConfig, create_session

    sess = create_session(a.model_path, SessionConfig(device=a.device, device_id=a.device_id,
                                                      intra_op_threads=a.threads),
                          model_sha256=a.model_sha256, external_data=a.external_data)
    return OrtEncoderSession(sess, a.input_name, a.output_name, a.precision)


def import_openvino() -> Any:
    return optional_import("openvino", "openvino", "the openvino backend",
                           also="; or use --backend onnxruntime")


def openvino_config(precision: str, threads: Optional[int]) -> Dict[str, Any]:
    """Compile properties: f32 pinned except for a bf16 variant; latency hint (one stream:
    the Scorer sends one batch at a time)."""
    cfg: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                           "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def _open_openvino(a: OpenArgs) -> EncoderSession:
    ov = import_openvino()
    if a.device == "cuda":
        raise VariantError("the openvino backend runs on the CPU here; use --device cpu or "
                           "--backend onnxruntime for CUDA")
    core = ov.Core()
    try:
        model = core.read_model(str(a.model_path))
        compiled = core.compile_model(model, "CPU", openvino_config(a.precision, a.threads))
    except Exception as exc:
        raise BundleError(f"{a.model_path}: OpenVINO cannot load this model ({exc}); re-create "
                          "the variant with `quasar optimize` or use --backend onnxruntime"
                          ) from exc
    return OpenVinoEncoderSession(compiled, a.input_name, a.output_name, a.precision)


def _ort_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("onnxruntime") is not None


def _ov_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("openvino") is not None


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[OpenArgs], EncoderSession]
    available: Callable[[], bool]
    devices: Tuple[str, ...]


BACKENDS: Dict[str, Backend] = {
    "onnxruntime": Backend("onnxruntime", _open_ort, _ort_available, ("cpu", "cuda")),
    "openvino": Backend("openvino", _open_openvino, _ov_available, ("cpu",)),
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[str(name)]
    except KeyError:
        raise VariantError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None


def open_encoder(args: OpenArgs, backend: str = DEFAULT_BACKEND) -> EncoderSession:
    """A session of ``args.model_path`` on ``backend``."""
    return get_backend(backend).open(args)


# --------------------------------------------------------------------------- hardware

def cpu_flag_list(cpuinfo: str = "/proc/cpuinfo") -> List[str]:
    """The CPU feature flags in the kernel's order (first ``flags`` line of /proc/cpuinfo;
    empty elsewhere)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip().lower() in ("flags", "features"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> FrozenSet[str]:
    """The CPU feature flags as a set (see :func:`cpu_flag_list`)."""
    return frozenset(cpu_flag_list(cpuinfo))


def runs_fast(precision: str, flags: Iterable[str], cuda: bool) -> bool:
    """Does this hardware run ``precision`` faster than fp32? int8: VNNI; bf16: AVX512_BF16
    or AMX; fp16: a CUDA device."""
    f = set(flags)
    if precision == "fp32":
        return True
    if precision == "int8":
        return bool(f & VNNI_FLAGS)
    if precision == "bf16":
        return bool(f & BF16_FLAGS)
    if precision == "fp16":
        return bool(cuda)
    return False


@dataclass(frozen=True)
class Choice:
    """The outcome of :func:`choose_variant`: ``variant`` is the manifest key (None: the fp32
    encoder), with its precision, backend and why it was chosen."""

    variant: Optional[str]
    precision: str
    backend: str
    reason: str


def _get(v: Any, name: str, default: Any = None) -> Any:
    return v.get(name, default) if isinstance(v, Mapping) else getattr(v, name, default)


def choose_variant(variants: Mapping[str, Any], precision: str = "fp32", *,
                   flags: Iterable[str] = (), cuda: bool = False,
                   backend: Optional[str] = None,
                   installed: Iterable[str] = ("onnxruntime",)) -> Choice:
    """Pick the encoder to run. Pure: no I/O, everything it depends on is an argument.

    ``variants``: the bundle's ``variants`` (VariantInfo or dicts); ``precision``: fp32 |
    int8 | bf16 | fp16 | auto; ``flags``: CPU flags; ``cuda``: a CUDA device is usable;
    ``backend``: restrict to one backend (None: any installed); ``installed``: the backends
    importable here. Raises :class:`VariantError` when an explicit precision has no usable
    variant. A variant that did not pass its gate is never chosen.
    """
    if precision not in RUNTIME_PRECISIONS:
        raise VariantError(f"precision must be one of {RUNTIME_PRECISIONS}, got {precision!r}")
    installed = set(installed)
    flags = set(flags)
    fp32_backend = backend or DEFAULT_BACKEND
    models = {k: v for k, v in variants.items() if _get(v, "kind", "model") == "model"}
    if precision == "fp32":
        return Choice(None, "fp32", fp32_backend, "fp32 requested")

    def usable(v: Any) -> Tuple[bool, str]:
        if not _get(v, "passed", False):
            return False, "it failed its agreement gate"
        b = _get(v, "backend")
        if backend is not None and b != backend:
            return False, f"it runs on {b}, not --backend {backend}"
        if b not in installed:
            return False, f"backend {b} is not installed"
        if _get(v, "device", "cpu") == "cuda" and not cuda:
            return False, "it needs CUDA"
        return True, ""

    if precision == "auto":
        candidates = []
        for prec, be in AUTO_ORDER:
            for name, v in models.items():
                if _get(v, "precision") == prec and _get(v, "backend") == be:
                    ok, _ = usable(v)
                    if ok and runs_fast(prec, flags, cuda):
                        candidates.append(name)
        if candidates:
            v = models[candidates[0]]
            return Choice(candidates[0], _get(v, "precision"), _get(v, "backend"),
                          "auto: the fastest gated variant this hardware runs fast")
        why = ("no gated variant in the bundle" if not any(_get(v, "passed", False)
                                                           for v in models.values())
               else "no gated variant this hardware runs fast")
        return Choice(None, "fp32", fp32_backend, f"auto: {why}; fp32")

    same = {k: v for k, v in models.items() if _get(v, "precision") == precision}
    if not same:
        raise VariantError(
            f"the bundle has no {precision} variant (it has: "
            f"{sorted(models) or 'none'}); create one with `quasar optimize BUNDLE --precision "
            f"{precision} --calibration DIR`, or use --precision fp32 / auto")
    reasons = []
    order = [be for p, be in AUTO_ORDER if p == precision]
    ranked = sorted(same.items(), key=lambda kv: order.index(_get(kv[1], "backend"))
                    if _get(kv[1], "backend") in order else len(order))
    for name, v in ranked:
        ok, why = usable(v)
        if ok:
            if not runs_fast(precision, flags, cuda):
                log.warning("precision %s requested, but this hardware has no fast %s path "
                            "(int8: VNNI, bf16: AVX512_BF16/AMX, fp16: CUDA); it may be slower "
                            "than fp32", precision, precision)
            return Choice(name, precision, _get(v, "backend"), f"{precision} requested")
        reasons.append(f"{name}: {why}")
    raise VariantError(f"no usable {precision} variant: " + "; ".join(reasons)
                       + ". Re-run `quasar optimize`, install the backend, or use --precision fp32")


def installed_backends() -> Tuple[str, ...]:
    return tuple(n for n, b in BACKENDS.items() if b.available())


def cuda_usable() -> bool:
    """True when onnxruntime has the CUDA provider (cheap check, no session)."""
    try:
        import onnxruntime
        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def variant_path(bundle_path: Union[str, Path], variant: Any) -> Path:
    files = _get(variant, "files") or []
    if not files:
        raise VariantError(f"{bundle_path}: variant has no model file; re-run quasar optimize")
    return Path(bundle_path) / files[0]


# --------------------------------------------------------------------------- measured auto

SPEED_BATCH = 8
SPEED_ROUNDS = 3


def auto_candidates(variants: Mapping[str, Any], *, flags: Iterable[str] = (),
                    cuda: bool = False, backend: Optional[str] = None,
                    installed: Iterable[str] = ("onnxruntime",)) -> List[str]:
    """Every variant ``auto`` may run (passed its gate, backend installed and allowed, the
    hardware runs its precision fast), in :data:`AUTO_ORDER`. Pure, like
    :func:`choose_variant` (whose first pick is the first of these)."""
    out: List[str] = []
    rest = dict(variants)
    while True:
        c = choose_variant(rest, "auto", flags=flags, cuda=cuda, backend=backend,
                           installed=installed)
        if c.variant is None:
            return out
        out.append(c.variant)
        del rest[c.variant]


def speed_cache_path(bundle_sha256: str, flags: Iterable[str]) -> Path:
    """``$QUASAR_HOME/speed/<key>.json``: one file per bundle content and CPU (its flags),
    outside the bundle, whose checksums must not change."""
    import hashlib

    from quasar.home import quasar_home

    key = hashlib.sha256(f"{bundle_sha256}\n{' '.join(flags)}".encode()).hexdigest()[:32]
    return quasar_home() / "speed" / f"{key}.json"


def read_speed_cache(path: Path) -> Dict[str, Any]:
    """The cached measurements ({entry key: {"img_s": ...}}); {} when absent or unreadable
    (a damaged cache is measured again, never trusted)."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        entries = data.get("entries", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in entries.items() if isinstance(v, dict) and
                isinstance(v.get("img_s"), (int, float)) and np.isfinite(v["img_s"])
                and v["img_s"] > 0}
    except (OSError, ValueError, AttributeError):
        return {}


def time_session(session: EncoderSession, shape: Tuple[int, ...],
                 rounds: int = SPEED_ROUNDS) -> float:
    """Images/s of ``session`` on a fixed batch of ``shape``: one warm-up run, then the
    fastest of ``rounds`` runs (the minimum is the least disturbed by other processes)."""
    import time

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session.run(x)
    best = float("inf")
    for _ in range(max(1, int(rounds))):
        t0 = time.perf_counter()
        session.run(x)
        best = min(best, time.perf_counter() - t0)
    return shape[0] / best


def fastest_measured(candidates: Sequence[str], entry_key: Callable[[str], str],
                     measure: Callable[[str], float], cache_path: Path,
                     meta: Mapping[str, Any]) -> Tuple[str, Dict[str, float], bool]:
    """The candidate with the highest images/s: cached measurements first (``entry_key``),
    the others measured with ``measure`` and added to the cache (written atomically; a cache
    that cannot be written only costs a new measurement next time). Returns (name,
    {name: img/s}, whether every figure came from the cache)."""
    import json
    import time

    from quasar.bundle.atomic import atomic_write_text

    cached = read_speed_cache(cache_path)
    speeds: Dict[str, float] = {}
    fresh: Dict[str, Any] = {}
    for name in candidates:
        hit = cached.get(entry_key(name))
        if hit is not None:
            speeds[name] = float(hit["img_s"])
            continue
        speeds[name] = float(measure(name))
        fresh[entry_key(name)] = {"img_s": round(speeds[name], 3),
                                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime())}
    if fresh:
        try:
            Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
            body = {**dict(meta), "entries": {**read_speed_cache(cache_path), **fresh}}
            atomic_write_text(cache_path, json.dumps(body, indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            log.warning("could not write the speed cache %s (%s); auto will measure again "
                        "next time", cache_path, exc)
    best = max(candidates, key=lambda n: speeds[n])
    return best, speeds, not fresh


def choose_by_speed(bundle: Any, variants: Mapping[str, Any], choice: Choice, *,
                    flags: Sequence[str], cuda: bool, backend: Optional[str],
                    installed: Iterable[str], resolution: Optional[str],
                    open_session: Callable[[Choice], EncoderSession]) -> Choice:
    """``auto`` by measured speed on this machine: among the variants ``auto`` may run
    (:func:`auto_candidates`), the one with the most images/s on a batch of
    :data:`SPEED_BATCH` at the scoring resolution, measured once per bundle content, variant,
    input shape and CPU (flags), cached in ``$QUASAR_HOME/speed`` and reused after. One
    candidate: no measurement."""
    names = auto_candidates(variants, flags=flags, cuda=cuda, backend=backend,
                            installed=installed)
    if len(names) < 2:
        return choice
    shape = speed_shape(bundle, resolution)
    flags = list(flags)

    def key(name: str) -> str:
        return f"{name}|{'x'.join(map(str, shape))}"

    def measure(name: str) -> float:
        v = variants[name]
        c = Choice(name, _get(v, "precision"), _get(v, "backend"), "measuring")
        sess = open_session(c)
        try:
            return time_session(sess, shape)
        finally:
            del sess

    path = speed_cache_path(bundle.sha256, flags)
    best, speeds, cached = fastest_measured(
        names, key, measure, path, {"bundle": str(bundle.path), "bundle_sha256": bundle.sha256,
                                    "cpu_flags": " ".join(flags)})
    v = variants[best]
    figures = ", ".join(f"{n} {speeds[n]:.1f} img/s" for n in names)
    return Choice(best, _get(v, "precision"), _get(v, "backend"),
                  f"auto: the fastest gated variant measured on this machine ({figures}"
                  f"{'; cached' if cached else ''})")


def speed_shape(bundle: Any, resolution: Optional[str]) -> Tuple[int, int, int, int]:
    """The batch the candidates are timed on: :data:`SPEED_BATCH` images at the encoder's
    fixed size, else the resolution's crop / resize size (224 for native resolution)."""
    enc = bundle.manifest.encoder
    if not enc.dynamic_hw and enc.input_size:
        side = int(enc.input_size)
    else:
        cfg = bundle.preprocess(resolution or bundle.manifest.default_resolution)
        side = int(cfg.crop or (cfg.size if cfg.resize_mode == "shortest" else 0) or 224)
    return (SPEED_BATCH, 3, side, side)
