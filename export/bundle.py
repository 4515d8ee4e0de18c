"""Export a model to a bundle directory: encoder.onnx (+ external data), anchors.safetensors,
bundle.json. The directory is built through the bundle layer (:func:`quasar.bundle.write_bundle`:
a temporary sibling renamed into place at the end); on any failure nothing is left at
``out_dir``. Adding anchor sets later is :func:`quasar.bundle.add_anchor_set`.
"""
from __future__ import annotations

import gc
import logging
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from quasar.bundle.anchors import write_anchor_file
from quasar.bundle.io import finalise, write_bundle
from quasar.bundle.manifest import BundleManifest, EncoderInfo
from quasar.constants import ANCHORS_FILE
from quasar.errors import BundleExistsError
from quasar.models.catalog import ModelSpec, get_model_spec

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
AnchorSets = Mapping[str, Tuple[np.ndarray, Mapping[str, Any]]]


def write_anchors(path: PathLike, sets: AnchorSets) -> Path:
    """Write ``{name: ([2, D] array, recipe dict)}`` to an anchors file (rows normalised)."""
    return write_anchor_file(path, {k: a for k, (a, _) in sets.items()},
                             {k: dict(r) for k, (_, r) in sets.items()})


def _versions() -> Dict[str, Optional[str]]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for mod, dist in (("torch", "torch"), ("open_clip", "open_clip_torch"), ("timm", "timm"),
                      ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                      ("onnxscript", "onnxscript"), ("quasar", "quasar")):
        try:
            out[mod] = md.version(dist)
        except md.PackageNotFoundError:
            out[mod] = None
    return out


# ---------------------------------------------------------------------------- export


def export_bundle(model_id: Union[str, ModelSpec], out_dir: PathLike, *,
                  checkpoint: Optional[PathLike] = None, random_init: bool = False,
                  seed: int = 0, overwrite: bool = False, exporter: str = "auto") -> Path:
    """Export ``model_id`` to a verified bundle at ``out_dir``; returns ``out_dir``.

    Raises UnknownModelError, CheckpointError, ExportError (parity), BundleExistsError
    (``out_dir`` exists and not ``overwrite``). On failure nothing is left at ``out_dir``.
    """
    spec = model_id if isinstance(model_id, ModelSpec) else get_model_spec(model_id)
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not overwrite:
        raise BundleExistsError(
            f"Output directory {str(out_dir)!r} already exists. Pass --overwrite to replace "
            "it or choose another --out.")
    with write_bundle(out_dir, overwrite=overwrite) as work:
        _build_bundle(spec, work, checkpoint=checkpoint, random_init=random_init, seed=seed,
                      exporter=exporter)
    log.info("bundle written: %s", out_dir)
    return out_dir


def _build_bundle(spec: ModelSpec, work: Path, *, checkpoint, random_init: bool, seed: int,
                  exporter: str) -> None:
    from .encoders import build_encoder
    from .onnx import check_parity, export_onnx
    from .text_anchors import TEXT_SET, text_anchors

    t0 = time.perf_counter()
    built = build_encoder(spec, checkpoint=checkpoint, random_init=random_init, seed=seed)
    anchor_sets = {}
    if spec.has_text_tower:
        anchor_sets[TEXT_SET] = text_anchors(spec, built.model)
    anchors = list(anchor_sets)
    if anchor_sets:
        write_anchors(work / ANCHORS_FILE, anchor_sets)
    provenance = dict(built.provenance)
    tower = built.image_tower
    tower.__dict__["_full_model"] = None  # free the text tower before exporting (ViT-bigG)
    del built
    gc.collect()
    input_size = spec.input_size or 224
    exp = export_onnx(tower, work, dynamic_hw=spec.dynamic_hw, input_size=input_size,
                      exporter=exporter)
    gc.collect()
    parity = check_parity(tower, exp.path, dynamic_hw=spec.dynamic_hw, input_size=input_size)
    del tower
    gc.collect()
    provenance.update(
        exporter=exp.exporter,
        opset=exp.opset,
        onnx_export_seconds=round(exp.seconds, 2),
        versions=_versions(),
        exported_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    manifest = BundleManifest(
        model=spec.id,
        family=spec.family,
        encoder=EncoderInfo(embed_dim=spec.embed_dim, dynamic_hw=spec.dynamic_hw,
                            input_size=spec.input_size, precision="fp32", opset=exp.opset,
                            external_data=exp.external_data,
                            normalized_output=spec.normalized_output),
        preprocess={r: spec.preprocess(r) for r in spec.resolutions},
        default_resolution=spec.default_resolution,
        anchors=anchors,
        provenance=provenance,
        parity=parity,
    )
    manifest.provenance["export_seconds"] = round(time.perf_counter() - t0, 2)
    finalise(work, manifest)
