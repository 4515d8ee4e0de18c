"""``anchors.safetensors``: the one reader and writer of a bundle's anchor sets.

One float32 ``[2, D]`` tensor per set (row 0 good, row 1 bad), rows L2-normalised;
``metadata[set name]`` = the JSON recipe of that set (how it was built).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from quasar.errors import BundleError

from .atomic import atomic_output

NORM_TOL = 1e-3
AnchorSets = Dict[str, np.ndarray]
Recipes = Dict[str, Dict[str, Any]]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (float64) scaled to unit L2 norm; refuses zero or non-finite rows."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(n == 0) or not np.all(np.isfinite(n)):
        raise ValueError("cannot L2-normalise a zero or non-finite anchor vector")
    return x / n


def check_anchor_set(name: str, a: np.ndarray, dim: Optional[int], where: str,
                     model: str = "this model") -> np.ndarray:
    """A valid ``[2, dim]`` unit-row float32 set, or a BundleError naming ``where``."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] != 2 or (dim is not None and a.shape[1] != dim):
        want = f"[2, {dim}]" if dim is not None else "[2, D]"
        raise BundleError(
            f"{where}: anchor set {name!r} has shape {list(a.shape)}, expected {want} (good, "
            f"bad) for the embeddings of {model}; the anchors were built with another encoder "
            "- rebuild them with `quasar anchors` for this model")
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise BundleError(f"{where}: anchor set {name!r} holds NaN/inf values; rebuild it "
                          "with `quasar anchors`")
    norms = np.linalg.norm(a.astype(np.float64), axis=1)
    if np.any(np.abs(norms - 1.0) > NORM_TOL):
        raise BundleError(
            f"{where}: anchor set {name!r} rows are not unit-norm (norms "
            f"{np.round(norms, 4).tolist()}); anchors must be L2-normalised - rebuild them")
    return a


def read_anchor_file(path, dim: Optional[int] = None, model: str = "this model"
                     ) -> Tuple[AnchorSets, Recipes]:
    """(set name -> float32 [2, D], set name -> recipe dict), every set validated."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: anchors file is missing; re-export the bundle or add "
                          "anchor sets with `quasar anchors`")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"{path}: cannot read anchors ({exc}); re-export the bundle") from exc
    sets: AnchorSets = {}
    recipes: Recipes = {}
    for name, a in raw.items():
        sets[name] = check_anchor_set(name, a, dim, str(path), model)
        text = meta.get(name)
        if text is None:
            recipes[name] = {}
            continue
        try:
            recipe = json.loads(text)
        except json.JSONDecodeError:
            recipe = {"recipe": text}
        recipes[name] = recipe if isinstance(recipe, dict) else {"recipe": recipe}
    return sets, recipes


def write_anchor_file(path, sets: Mapping[str, np.ndarray],
                      recipes: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Path:
    """Write ``anchors.safetensors`` atomically; each set is L2-normalised here.

    All sets must be ``[2, D]`` with one D."""
    from safetensors.numpy import save_file

    recipes = recipes or {}
    tensors, meta, dim = {}, {}, None
    for name, arr in sets.items():
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != 2:
            raise BundleError(f"anchor set {name!r} must be [2, D], got {list(a.shape)}")
        if dim is not None and a.shape[1] != dim:
            raise BundleError(f"anchor set {name!r} has dim {a.shape[1]}, the others {dim}")
        dim = a.shape[1]
        try:
            tensors[name] = np.ascontiguousarray(l2_normalise(a), dtype=np.float32)
        except ValueError as exc:
            raise BundleError(f"anchor set {name!r}: {exc}") from exc
        meta[name] = json.dumps(dict(recipes.get(name, {})), sort_keys=True)
    path = Path(path)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path
