"""Write a bundle directory atomically: encoder.onnx (+ external data), anchors.safetensors,
bundle.json. Everything is built in a temporary directory next to ``out_dir`` and renamed
into place at the end; on any failure nothing is left at ``out_dir``.

Adding anchor sets to an existing bundle (atomically, checksums updated) is
:func:`quasar.export.anchors.add_anchor_set`.
"""
from __future__ import annotations

import gc
import logging
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from quasar.errors import BundleError, QuasarError
from quasar.models.catalog import ModelSpec, get_model_spec
from quasar.models.manifest import (ANCHORS_FILE, BUNDLE_JSON, BundleManifest, EncoderInfo)
from quasar.runtime.bundle import sha256_file

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
AnchorSets = Mapping[str, Tuple[np.ndarray, Mapping[str, Any]]]


class BundleExistsError(QuasarError, FileExistsError):
    """The output directory of an export already exists."""


# --------------------------------------------------------------------------- helpers


def file_checksums(bundle_dir: PathLike) -> Dict[str, str]:
    """sha256 of every file in ``bundle_dir`` except bundle.json (relative names, sorted)."""
    bundle_dir = Path(bundle_dir)
    return {p.relative_to(bundle_dir).as_posix(): sha256_file(p)
            for p in sorted(bundle_dir.rglob("*")) if p.is_file() and p.name != BUNDLE_JSON}


def write_manifest(bundle_dir: PathLike, manifest: BundleManifest) -> Path:
    """Write bundle.json atomically (temp file + replace)."""
    path = Path(bundle_dir) / BUNDLE_JSON
    tmp = path.with_name(f".{BUNDLE_JSON}.tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, path)
    return path


def write_anchors(path: PathLike, sets: AnchorSets) -> Path:
    """Write anchor sets ``{name: (float32 [2, D] array, recipe dict)}`` to safetensors.

    Rows are L2-normalised here (row 0 good, row 1 bad); metadata[name] = JSON recipe.
    """
    from .anchors import write_anchor_file

    arrays, recipes = {}, {}
    dim = None
    for name, (arr, recipe) in sets.items():
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != 2:
            raise BundleError(f"anchor set {name!r} must be [2, D], got {arr.shape}")
        if dim is not None and arr.shape[1] != dim:
            raise BundleError(f"anchor set {name!r} has dim {arr.shape[1]}, others {dim}")
        dim = arr.shape[1]
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if not np.all(np.isfinite(arr)) or np.any(norms == 0):
            raise BundleError(f"anchor set {name!r} has zero or non-finite rows")
        arrays[name], recipes[name] = (arr / norms).astype(np.float32), dict(recipe)
    write_anchor_file(path, arrays, recipes)
    return Path(path)


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
            "it or choose another --out."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _build_bundle(spec, tmp, checkpoint=checkpoint, random_init=random_init, seed=seed,
                      exporter=exporter)
        _set_permissions(tmp)
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle written: %s", out_dir)
    return out_dir


def _set_permissions(root: Path) -> None:
    """mkdtemp makes 0700 dirs: give the bundle ordinary permissions (umask applied)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def replace_directory(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``, which exists: the old one is renamed aside,
    ``new`` renamed in (the old one is restored if that fails), then the old one removed."""
    target = Path(target)
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if not overwrite:
        raise BundleExistsError(f"Output directory {str(out_dir)!r} appeared during export; "
                                "pass --overwrite or choose another --out.")
    replace_directory(tmp, out_dir)


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
        files=file_checksums(work),
    )
    manifest.provenance["export_seconds"] = round(time.perf_counter() - t0, 2)
    write_manifest(work, manifest)
