"""Scorer: images -> embeddings (ONNX Runtime) -> QUASAR scores against anchor sets.

QUASAR (Kastryulin et al., "QUASAR: QUality and Aesthetics Scoring with Advanced
Representations", arXiv:2403.06866) scores an image by how much closer its embedding is to
the "good" than to the "bad" anchor: :func:`quasar.runtime.scoring.quasar_scores`, exactly
as the reference ``main.py``. Batching, decode-ahead, grouping by shape at native
resolution and per-input failure isolation are the engine's
(:mod:`quasar.runtime.engine`); results always come back in input order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from quasar.bundle import Bundle, BundleManifest, load_bundle
from quasar.errors import BundleError, InferenceError, VariantError

from .backends import (Choice, EncoderSession, OpenArgs, choose_variant, cpu_flags, cuda_usable,
                       installed_backends, open_encoder)
from .engine import Engine, EngineConfig
from .images import ImageInput, ImageLoader
from .scoring import quasar_scores

log = logging.getLogger(__name__)

ERRORS = ("raise", "collect")


@dataclass
class ScoreResult:
    """``errors="collect"`` result: ``values`` (array, or dict of arrays) with NaN rows where
    an input failed, and ``errors`` aligned with the inputs (None where it worked)."""

    values: Any
    errors: List[Optional[Exception]]

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)


def select_anchors(bundle: Bundle, anchors: Union[str, Sequence[str], None]) -> List[str]:
    """Anchor set names from ``"name"``, ``"a,b"``, a list, ``"all"`` or None (first set).

    The default ``"text"`` falls back to the bundle's first set when the bundle has no text
    anchors (DINOv2); other missing names raise :class:`BundleError`.
    """
    available = bundle.anchor_names
    if anchors is None:
        return available[:1]
    if isinstance(anchors, str):
        if anchors.strip().lower() == "all":
            return list(available)
        names = [a.strip() for a in anchors.split(",") if a.strip()]
    else:
        names = [str(a) for a in anchors]
    if names == ["text"] and "text" not in available:
        if available:
            log.warning("bundle %s has no text anchors; using anchor set %r", bundle.path,
                        available[0])
        return available[:1]
    missing = [n for n in names if n not in available]
    if missing:
        raise BundleError(
            f"{bundle.anchors_path}: no anchor set {missing} in this bundle; available: "
            f"{available or 'none'} (add sets with `quasar anchors`)"
        )
    return list(dict.fromkeys(names))


def resolve_precision(bundle: Bundle, precision: str = "fp32", backend: Optional[str] = None,
                      device: str = "auto", resolution: Optional[str] = None) -> Choice:
    """Which encoder of ``bundle`` runs: :func:`quasar.runtime.backends.choose_variant` fed
    with this machine's CPU flags, CUDA availability and installed backends. ``auto`` only
    considers variants whose agreement was measured at ``resolution``; an explicit precision
    measured at another resolution is used with a warning."""
    precision = str(precision).lower()
    variants = bundle.manifest.variants
    if precision == "auto" and resolution is not None:
        variants = {k: v for k, v in variants.items() if v.resolution in (None, str(resolution))}
    choice = choose_variant(variants, precision, flags=cpu_flags(),
                            cuda=device != "cpu" and cuda_usable(), backend=backend,
                            installed=installed_backends())
    if precision == "auto" and choice.variant is not None:  # by measured speed, cached
        from .backends import choose_by_speed, cpu_flag_list
        choice = choose_by_speed(
            bundle, variants, choice, flags=cpu_flag_list(), resolution=resolution,
            cuda=device != "cpu" and cuda_usable(), backend=backend,
            installed=installed_backends(), open_session=lambda c: open_bundle_encoder(
                bundle, c, device=device))
    if choice.variant is not None and resolution is not None:
        measured = variants[choice.variant].resolution
        if measured not in (None, str(resolution)):
            log.warning("variant %s was gated at resolution %s, not %s: its agreement at %s "
                        "was never measured (re-run quasar optimize --resolution %s)",
                        choice.variant, measured, resolution, resolution, resolution)
    return choice


def open_bundle_encoder(bundle: Bundle, choice: Choice, *, device: str = "auto",
                        device_id: int = 0, threads: Optional[int] = None) -> EncoderSession:
    """The session of the chosen encoder: the fp32 ``encoder.onnx`` or a variant's file."""
    m = bundle.manifest
    if choice.variant is None:
        rel, external = m.encoder.file, bool(m.encoder.external_data)
    else:
        v = m.variants[choice.variant]
        if not v.passed:  # choose_variant never picks one; a hand-edited manifest might
            raise VariantError(f"{bundle.path}: variant {choice.variant!r} failed its agreement "
                               "gate and is never used")
        rel, external = v.files[0], False
        device = "cuda" if v.device == "cuda" else ("cpu" if device == "auto" else device)
    args = OpenArgs(model_path=bundle.path / rel, input_name=m.encoder.input_name,
                    output_name=m.encoder.output_name, precision=choice.precision,
                    device=device, device_id=device_id, threads=threads,
                    model_sha256=m.files.get(rel), external_data=external)
    return open_encoder(args, choice.backend)


def check_fast_decode(bundle: Bundle, resolution: str) -> None:
    """Fast decode only where ``quasar optimize --fast-decode`` gated it for ``resolution``."""
    recs = [v for v in bundle.manifest.variants.values()
            if v.kind == "decode" and v.resolution == str(resolution)]
    if not any(v.passed for v in recs):
        raise VariantError(
            f"{bundle.path}: fast decode changes pixels and is used only after its agreement "
            f"with exact decoding was measured at resolution {resolution}: run `quasar optimize "
            f"{bundle.path} --fast-decode --calibration DIR --resolution {resolution}` first"
            + (" (the last measurement failed its gate)" if recs else ""))


def _as_list(images: Any) -> List[Any]:
    if isinstance(images, (str, Path, bytes, bytearray, memoryview)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    try:
        from PIL import Image
        if isinstance(images, Image.Image):
            return [images]
    except ImportError:  # pragma: no cover
        pass
    return list(images)


class Scorer:
    """Score images with a bundle. Build with :meth:`from_bundle`."""

    def __init__(self, bundle: Bundle, *, device: str = "auto", device_id: int = 0,
                 anchors: Union[str, Sequence[str], None] = "text",
                 resolution: Optional[str] = None, batch_size: int = 16,
                 threads: Optional[int] = None, apply_exif: bool = False,
                 max_pixels: Optional[int] = None, decode_workers: Optional[int] = None,
                 precision: str = "fp32", backend: Optional[str] = None,
                 fast_decode: bool = False):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.bundle = bundle
        self.anchor_names: List[str] = select_anchors(bundle, anchors)
        self.resolution: str = str(resolution if resolution is not None
                                   else bundle.manifest.default_resolution)
        self.preprocess_cfg = bundle.preprocess(self.resolution)
        self.batch_size = int(batch_size)
        if fast_decode:
            check_fast_decode(bundle, self.resolution)
        self.fast_decode = bool(fast_decode)
        self.loader = ImageLoader(self.preprocess_cfg, apply_exif=apply_exif,
                                  max_pixels=max_pixels, fast_decode=self.fast_decode)
        self.choice = resolve_precision(bundle, precision, backend, device, self.resolution)
        self.encoder = open_bundle_encoder(bundle, self.choice, device=device,
                                           device_id=device_id, threads=threads)
        self.session = self.encoder.raw  # the backend's own session object
        self.device = self.encoder.device
        self.precision, self.backend = self.choice.precision, self.choice.backend
        log.info("encoder: precision %s (%s) on %s, %s: %s", self.precision,
                 self.choice.variant or "fp32 encoder", self.backend, self.device,
                 self.choice.reason)
        enc = bundle.manifest.encoder
        self._input = enc.input_name
        self._output = enc.output_name
        self._anchor_mats = {n: bundle.anchors[n] for n in self.anchor_names}
        self.decode_workers = decode_workers if decode_workers is not None else 2

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bundle(cls, path: Union[str, Path, None] = None, *, model: Optional[str] = None,
                    device: str = "auto", device_id: int = 0,
                    anchors: Union[str, Sequence[str], None] = "text",
                    resolution: Optional[str] = None, batch_size: int = 16,
                    threads: Optional[int] = None, apply_exif: bool = False,
                    max_pixels: Optional[int] = None, verify: bool = True,
                    decode_workers: Optional[int] = None, precision: str = "fp32",
                    backend: Optional[str] = None, fast_decode: bool = False) -> "Scorer":
        """Scorer for the bundle in ``path`` (None: the cached bundle of ``model``, default
        ``clip-rn50-nopos.openai``; see :func:`quasar.runtime.default_bundle.resolve_bundle`).

        ``precision``: fp32 (default, exact) | int8 | bf16 | fp16 | auto - a variant written by
        ``quasar optimize`` that passed its agreement gate; ``auto`` picks the fastest one this
        hardware runs fast, else fp32 (``scorer.choice`` says which and why). ``backend``:
        onnxruntime | openvino (None: the variant's, or onnxruntime). ``fast_decode``: DCT-scaled
        JPEG decoding, only when ``quasar optimize --fast-decode`` gated it for the resolution.
        """
        from .default_bundle import resolve_bundle

        bundle_dir = resolve_bundle(path, model=model)
        bundle = load_bundle(bundle_dir, verify=verify)
        if model is not None and path is not None and bundle.model != model:
            log.warning("bundle %s holds %s, not the requested %s", bundle_dir, bundle.model,
                        model)
        return cls(bundle, device=device, device_id=device_id, anchors=anchors,
                   resolution=resolution, batch_size=batch_size, threads=threads,
                   apply_exif=apply_exif, max_pixels=max_pixels, decode_workers=decode_workers,
                   precision=precision, backend=backend, fast_decode=fast_decode)

    # ------------------------------------------------------------------ properties
    @property
    def manifest(self) -> BundleManifest:
        return self.bundle.manifest

    @property
    def embed_dim(self) -> int:
        return self.bundle.embed_dim

    @property
    def fixed_size(self) -> Optional[Tuple[int, int]]:
        """(H, W) of every input, None for native / 512 (dynamic H×W)."""
        return self.preprocess_cfg.fixed_size

    def __repr__(self) -> str:
        return (f"Scorer(model={self.bundle.model!r}, resolution={self.resolution!r}, "
                f"anchors={self.anchor_names}, device={self.device!r}, "
                f"precision={self.precision!r}, backend={self.backend!r})")

    @property
    def run_info(self) -> Dict[str, Any]:
        """What ran, to record with the results: precision, backend, variant, device,
        fast decode and why this precision was chosen."""
        return {"precision": self.precision, "backend": self.backend,
                "variant": self.choice.variant, "device": self.device,
                "fast_decode": self.fast_decode, "precision_reason": self.choice.reason}

    # ------------------------------------------------------------------ steps
    def load_image(self, src: ImageInput) -> np.ndarray:
        """Decode + preprocess one input -> float32 [3, H, W]. Thread-safe."""
        return self.loader(src)

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Encoder only: float32 [N, 3, H, W] (one H×W) -> float32 [N, D] (unnormalised)."""
        x = np.asarray(batch)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"embed_pixels needs [N, 3, H, W], got shape {list(x.shape)}")
        enc = self.bundle.manifest.encoder
        if not enc.dynamic_hw and enc.input_size and x.shape[2:] != (enc.input_size,) * 2:
            raise ValueError(
                f"{self.bundle.model} takes {enc.input_size}x{enc.input_size} inputs, got "
                f"{x.shape[2]}x{x.shape[3]}; preprocess with load_image()"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = []
        for i in range(0, len(x), self.batch_size):
            chunk = x[i:i + self.batch_size]
            try:
                out = self.encoder.run(chunk)
            except Exception as exc:
                raise InferenceError(
                    f"{self.backend} failed on a batch of shape {list(chunk.shape)} with "
                    f"{self.bundle.path} ({self.choice.variant or 'fp32 encoder'}): {exc}"
                ) from exc
            outs.append(np.asarray(out, dtype=np.float32))
        if not outs:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(outs, axis=0)

    def scores_from_embeddings(self, emb: np.ndarray) -> Dict[str, np.ndarray]:
        """Anchor set name -> float64 [N] scores of embeddings [N, D]."""
        e = np.asarray(emb)
        if e.ndim == 1:
            e = e[None]
        if e.ndim != 2 or e.shape[1] != self.embed_dim:
            raise ValueError(f"embeddings must be [N, {self.embed_dim}], got {list(e.shape)}")
        if not self.anchor_names:
            raise BundleError(f"{self.bundle.anchors_path}: the bundle has no anchor sets; build "
                              "some with `quasar anchors` (embeddings still work)")
        return {n: quasar_scores(e, a) for n, a in self._anchor_mats.items()}

    # ------------------------------------------------------------------ many images
    def engine_for(self, cfg: Optional[EngineConfig] = None) -> Engine:
        """An :class:`Engine` over this scorer's loader and session (default: the scorer's
        batch size and decode threads; variable shapes at native / 512)."""
        if cfg is None:
            cfg = EngineConfig(batch_size=self.batch_size, workers=max(1, self.decode_workers),
                               variable_shapes=self.fixed_size is None)
        return Engine.for_scorer(self, cfg)

    @property
    def engine(self) -> Engine:
        return self.engine_for()

    def _embed_many(self, images: Any, errors: str) -> Tuple[np.ndarray, List[Optional[Exception]]]:
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")
        items = _as_list(images)
        if errors == "collect":
            w = self.engine.run(items)
            return w.embeddings, w.errors
        embs: List[np.ndarray] = []
        for w in self.engine.windows(items):
            for err in w.errors:
                if err is not None:
                    raise err
            embs.append(w.embeddings)
        emb = np.concatenate(embs) if embs else np.zeros((0, self.embed_dim), np.float32)
        return emb, [None] * len(emb)

    def embed(self, images: Any, errors: str = "raise") -> Union[np.ndarray, ScoreResult]:
        """Embeddings float32 [N, D] (unnormalised, as the encoder returns them)."""
        emb, errs = self._embed_many(images, errors)
        return ScoreResult(emb, errs) if errors == "collect" else emb

    def score_all(self, images: Any, errors: str = "raise"
                  ) -> Union[Dict[str, np.ndarray], ScoreResult]:
        """Anchor set name -> scores [N] for every selected set, one encoder pass."""
        emb, errs = self._embed_many(images, errors)
        if not self.anchor_names:
            self.scores_from_embeddings(emb[:0])  # raises the no-anchors error
        scores = {n: quasar_scores(emb, a) if len(emb) else np.zeros(0)
                  for n, a in self._anchor_mats.items()}
        return ScoreResult(scores, errs) if errors == "collect" else scores

    def score(self, images: Any, errors: str = "raise") -> Union[np.ndarray, ScoreResult]:
        """Scores [N] against the first selected anchor set."""
        res = self.score_all(images, errors)
        if isinstance(res, ScoreResult):
            return ScoreResult(res.values[self.anchor_names[0]], res.errors)
        return res[self.anchor_names[0]]
