"""Load and validate a bundle directory (bundle.json + encoder.onnx + anchors.safetensors).

Every problem raises a :class:`BundleError` that names the file and the fix. Nothing here
imports torch or onnxruntime.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from quasar.errors import BundleError
from quasar.models.manifest import ANCHORS_FILE, BUNDLE_JSON, SCHEMA_VERSION, BundleManifest
from quasar.models.preprocess import PreprocessCfg

log = logging.getLogger(__name__)

CHUNK = 8 << 20  # 8 MiB: checksum multi-GB encoders without reading them into memory
NORM_TOL = 1e-3

_REEXPORT = "re-export the bundle with `quasar export <model> --out <dir>`"


def sha256_file(path: Union[str, Path], chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, streamed in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: its manifest, file paths, anchors and their recipes."""

    path: Path
    manifest: BundleManifest
    anchors: Dict[str, np.ndarray]  # name -> float32 [2, D] (row 0 good, row 1 bad)
    recipes: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def embed_dim(self) -> int:
        return int(self.manifest.encoder.embed_dim)

    @property
    def encoder_path(self) -> Path:
        return self.path / self.manifest.encoder.file

    @property
    def anchors_path(self) -> Path:
        return self.path / ANCHORS_FILE

    @property
    def anchor_names(self) -> List[str]:
        return list(self.anchors)

    @property
    def random_init(self) -> bool:
        return self.manifest.random_init

    def preprocess(self, resolution: Optional[str] = None) -> PreprocessCfg:
        """Preprocessing config of ``resolution`` (None: the bundle's default)."""
        res = str(resolution) if resolution is not None else self.manifest.default_resolution
        if res not in self.manifest.preprocess:
            raise BundleError(
                f"{self.path / BUNDLE_JSON}: model {self.model} supports resolutions "
                f"{sorted(self.manifest.preprocess)}, not {res!r}; pick one of those "
                "(512 and native need clip-rn50-nopos)"
            )
        return self.manifest.preprocess[res]


def _read_manifest(path: Path) -> BundleManifest:
    mpath = path / BUNDLE_JSON
    if not mpath.is_file():
        raise BundleError(f"{mpath}: missing - {path} is not a QUASAR bundle; {_REEXPORT}")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({exc}); {_REEXPORT}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{mpath}: expected a JSON object; {_REEXPORT}")
    try:
        version = int(data.get("schema_version", -1))
    except (TypeError, ValueError):
        version = -1
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{mpath}: bundle schema version {version} is newer than this quasar supports "
            f"({SCHEMA_VERSION}); upgrade quasar: pip install -U quasar"
        )
    if version < 1:
        raise BundleError(f"{mpath}: missing or invalid schema_version; {_REEXPORT}")
    try:
        manifest = BundleManifest.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{mpath}: malformed manifest ({type(exc).__name__}: {exc}); "
                          f"{_REEXPORT}") from exc
    if manifest.encoder.embed_dim <= 0:
        raise BundleError(f"{mpath}: encoder.embed_dim must be positive; {_REEXPORT}")
    if manifest.default_resolution not in manifest.preprocess:
        raise BundleError(f"{mpath}: default_resolution {manifest.default_resolution!r} has no "
                          f"preprocess entry; {_REEXPORT}")
    return manifest


def _check_files(path: Path, manifest: BundleManifest, verify: bool) -> None:
    required = {manifest.encoder.file, ANCHORS_FILE}
    if manifest.encoder.external_data:
        required.add(manifest.encoder.external_data)
    root = path.resolve()
    for name in sorted(set(manifest.files) | required):
        fpath = (path / name)
        if root not in fpath.resolve().parents:
            raise BundleError(f"{path / BUNDLE_JSON}: file entry {name!r} points outside the "
                              f"bundle; {_REEXPORT}")
        if not fpath.is_file():
            raise BundleError(f"{fpath}: missing from the bundle (listed in {BUNDLE_JSON}); "
                              f"copy the whole bundle directory again or {_REEXPORT}")
        if name not in manifest.files:
            raise BundleError(f"{path / BUNDLE_JSON}: no checksum for {name}; {_REEXPORT}")
    if not verify:
        return
    for name, expected in manifest.files.items():
        expected = str(expected).lower().removeprefix("sha256:")
        actual = sha256_file(path / name)
        if actual != expected:
            raise BundleError(
                f"{path / name}: sha256 mismatch (expected {expected[:16]}..., got "
                f"{actual[:16]}...): the file was modified or corrupted; copy the bundle again "
                f"or {_REEXPORT}"
            )


def _load_anchors(path: Path, manifest: BundleManifest):
    from safetensors import safe_open

    apath = path / ANCHORS_FILE
    try:
        with safe_open(str(apath), framework="numpy") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in names}
    except Exception as exc:
        raise BundleError(f"{apath}: cannot read anchors ({exc}); {_REEXPORT}") from exc
    order = [n for n in manifest.anchors if n in tensors] + \
        [n for n in names if n not in manifest.anchors]
    missing = [n for n in manifest.anchors if n not in tensors]
    if missing:
        raise BundleError(f"{apath}: anchor sets {missing} listed in {BUNDLE_JSON} are missing; "
                          f"rebuild them with `quasar anchors` or {_REEXPORT}")
    dim = int(manifest.encoder.embed_dim)
    anchors: Dict[str, np.ndarray] = {}
    recipes: Dict[str, Dict[str, Any]] = {}
    for name in order:
        a = np.asarray(tensors[name])
        if a.ndim != 2 or a.shape[0] != 2 or a.shape[1] != dim:
            raise BundleError(
                f"{apath}: anchor set {name!r} has shape {list(a.shape)}, expected [2, {dim}] "
                f"(good, bad) for the {dim}-d embeddings of {manifest.model}; the anchors were "
                "built with another encoder - rebuild them with `quasar anchors` for this model"
            )
        a = a.astype(np.float32, copy=False)
        if not np.all(np.isfinite(a)):
            raise BundleError(f"{apath}: anchor set {name!r} holds NaN/inf values; rebuild it")
        norms = np.linalg.norm(a.astype(np.float64), axis=1)
        if np.any(np.abs(norms - 1.0) > NORM_TOL):
            raise BundleError(
                f"{apath}: anchor set {name!r} rows are not unit-norm (norms "
                f"{np.round(norms, 4).tolist()}); anchors must be L2-normalised - rebuild them"
            )
        anchors[name] = a
        raw = meta.get(name)
        if raw is not None:
            try:
                recipe = json.loads(raw)
                recipes[name] = recipe if isinstance(recipe, dict) else {"recipe": recipe}
            except json.JSONDecodeError:
                recipes[name] = {"recipe": raw}
    return anchors, recipes


def load_bundle(path: Union[str, Path], *, verify: bool = True) -> Bundle:
    """Load and validate the bundle in ``path``.

    ``verify=False`` skips the sha256 of every file (multi-GB encoders take seconds to hash);
    structure, anchors and their dims are always checked.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise BundleError(f"{path}: no such bundle directory; {_REEXPORT}, or pass the right "
                          "--bundle DIR")
    if not path.is_dir():
        raise BundleError(f"{path}: a bundle is a directory (bundle.json, encoder.onnx, "
                          "anchors.safetensors), not a file; pass the directory")
    manifest = _read_manifest(path)
    _check_files(path, manifest, verify)
    anchors, recipes = _load_anchors(path, manifest)
    bundle = Bundle(path=path, manifest=manifest, anchors=anchors, recipes=recipes)
    if manifest.random_init:
        log.warning(
            "!!! Bundle %s (%s) holds RANDOMLY INITIALISED weights: its scores and embeddings "
            "carry NO quality meaning (use it for tests and speed measurements only) !!!",
            path, manifest.model,
        )
    return bundle
