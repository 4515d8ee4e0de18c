"""Read, validate, write and edit a bundle directory: the only code that touches one.

A bundle is ``bundle.json`` (the :class:`~quasar.bundle.manifest.BundleManifest`),
``encoder.onnx`` (+ ``encoder.onnx.data`` over 2 GB) and ``anchors.safetensors``. Export
writes one with :func:`write_bundle`; the runtime reads one with :func:`load_bundle`;
``quasar anchors`` / ``quasar optimize`` change one with :func:`edit_bundle` (a staged copy
that replaces the bundle atomically, checksums recomputed).

Every problem raises a :class:`~quasar.errors.BundleError` naming the file and the fix.
What is refused at load: a ``bundle.json`` that is not a regular file inside the bundle,
over :data:`MAX_MANIFEST_BYTES`, nested too deep, of a newer schema, or with values of the
wrong type or out of range; a listed file missing, outside the bundle (``..`` or a symlink
leading out) or not matching its sha256; any file in the bundle that is not listed (ONNX
Runtime loads external data by name from the bundle folder, so every file there must be
hashed); anchors of another dimension, not unit-norm or not finite. Nothing here imports
torch or onnxruntime.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np

from quasar.constants import ANCHORS_FILE, BUNDLE_JSON, SCHEMA_VERSION
from quasar.errors import BundleError, BundleExistsError, OutputLockedError
from quasar.models.preprocess import PreprocessCfg

from .anchors import check_anchor_set, read_anchor_file, write_anchor_file
from .atomic import (atomic_dir, atomic_write_text, fsync_dir, link_or_copy, pid_alive,
                     remove_path, replace_directory, temp_dir, temp_siblings)
from .lock import bundle_lock
from .manifest import BundleManifest

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
CHUNK = 8 << 20  # 8 MiB: checksum multi-GB encoders without reading them into memory
MAX_MANIFEST_BYTES = 1 << 20  # bundle.json is a few KB; refuse anything absurd
MAX_JSON_DEPTH = 32
ANCHOR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
REEXPORT = "re-export the bundle with `quasar export <model> --out <dir>`"
#: temporaries of a bundle's writers (edit_bundle, replace_directory, quasar optimize); all
#: made while the bundle's lock is held, so under the lock any of them is a killed writer's
WRITER_TEMPS = ("edit", "old", "optimize")
#: a new bundle being written (export's write_bundle, under the lock; but a bundle fetched
#: from a URL is written the same way without it): removed only when its process is gone
BUILD_TEMPS = ("tmp",)
_ANNOUNCED: set = set()  # bundles whose random-weights banner this process has printed


def sha256_file(path: PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, streamed in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_checksums(bundle_dir: PathLike) -> Dict[str, str]:
    """sha256 of every file in ``bundle_dir`` except bundle.json (relative POSIX names)."""
    bundle_dir = Path(bundle_dir)
    return {p.relative_to(bundle_dir).as_posix(): sha256_file(p)
            for p in sorted(bundle_dir.rglob("*")) if p.is_file() and p.name != BUNDLE_JSON}


def _bare(digest: str) -> str:
    return str(digest).lower().removeprefix("sha256:")


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

    @property
    def source(self) -> Optional[Dict[str, Any]]:
        """Where a bundle fetched by URL came from: ``{"url", "revision" (the Hub commit, or
        the sha256 of an object store's bundle.json), ...}``; None for a local bundle."""
        from .remote import source_of

        return source_of(self.path)

    @property
    def sha256(self) -> str:
        """Identity of the bundle's content: sha256 over its manifest's file checksums,
        model and preprocessing (what a run's results depend on)."""
        m = self.manifest
        ident = {"model": m.model, "files": dict(sorted(m.files.items())),
                 "preprocess": {k: v.to_dict() for k, v in sorted(m.preprocess.items())}}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def preprocess(self, resolution: Optional[str] = None) -> PreprocessCfg:
        """Preprocessing config of ``resolution`` (None: the bundle's default)."""
        res = str(resolution) if resolution is not None else self.manifest.default_resolution
        if res not in self.manifest.preprocess:
            raise BundleError(
                f"{self.path / BUNDLE_JSON}: model {self.model} supports resolutions "
                f"{sorted(self.manifest.preprocess)}, not {res!r}; pick one of those "
                "(512 and native need an encoder with dynamic input size)"
            )
        return self.manifest.preprocess[res]


# ------------------------------------------------------------------------------ reading


def _json_depth(x: Any, depth: int = 0) -> int:
    if depth > MAX_JSON_DEPTH:
        return depth
    if isinstance(x, dict):
        return max([_json_depth(v, depth + 1) for v in x.values()] or [depth + 1])
    if isinstance(x, list):
        return max([_json_depth(v, depth + 1) for v in x] or [depth + 1])
    return depth


def _inside(root: Path, p: Path) -> bool:
    try:
        p.resolve().relative_to(root)
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def read_manifest(path: PathLike) -> BundleManifest:
    """The validated manifest of the bundle directory ``path``."""
    path = Path(path)
    mpath = path / BUNDLE_JSON
    if not os.path.lexists(mpath):
        raise BundleError(f"{mpath}: missing - {path} is not a QUASAR bundle; {REEXPORT}")
    if mpath.is_symlink() and not _inside(path.resolve(), mpath):
        raise BundleError(f"{mpath}: a symlink leading outside the bundle; a bundle must "
                          f"hold its own files - copy the real file in or {REEXPORT}")
    if not mpath.is_file():
        raise BundleError(f"{mpath}: not a regular file; {REEXPORT}")
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"{mpath}: cannot be read ({exc.strerror or exc}); check its "
                          "permissions") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath}: larger than {MAX_MANIFEST_BYTES >> 20} MiB - not a bundle "
                          f"manifest; {REEXPORT}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({str(exc)[:200]}); {REEXPORT}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{mpath}: expected a JSON object; {REEXPORT}")
    if _json_depth(data) > MAX_JSON_DEPTH:
        raise BundleError(f"{mpath}: nested deeper than {MAX_JSON_DEPTH} levels; {REEXPORT}")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"{mpath}: schema_version must be an integer, got "
                          f"{str(version)[:40]!r}; {REEXPORT}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{mpath}: bundle schema version {version} is newer than this quasar supports "
            f"({SCHEMA_VERSION}); upgrade quasar: pip install -U quasar-iqa")
    if version < 1:
        raise BundleError(f"{mpath}: invalid schema_version {version}; {REEXPORT}")
    try:
        return BundleManifest.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise BundleError(f"{mpath}: malformed manifest ({what[:300]}); {REEXPORT}") from exc


def check_files(path: PathLike, manifest: BundleManifest, verify: bool = True) -> None:
    """Every file the manifest names (and the encoder loads) is in the bundle, listed and,
    with ``verify``, matches its sha256; no unlisted file; nothing leads outside."""
    path = Path(path)
    root = path.resolve()
    required = {manifest.encoder.file}
    if manifest.encoder.external_data:
        required.add(manifest.encoder.external_data)
    if manifest.anchors:
        required.add(ANCHORS_FILE)
    for name in sorted(set(manifest.files) | required):
        fpath = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not _inside(root, fpath):
            raise BundleError(f"{path / BUNDLE_JSON}: file entry {name!r} points outside the "
                              f"bundle; {REEXPORT}")
        if not fpath.is_file():
            raise BundleError(f"{fpath}: missing from the bundle (listed in {BUNDLE_JSON}); "
                              f"copy the whole bundle directory again or {REEXPORT}")
        if name not in manifest.files:
            raise BundleError(f"{path / BUNDLE_JSON}: no checksum for {name}; {REEXPORT}")
    listed = {Path(n).as_posix() for n in manifest.files} | {BUNDLE_JSON}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_dir() and not p.is_symlink():
            continue
        if rel not in listed:
            raise BundleError(
                f"{p}: a file in the bundle that bundle.json does not list (ONNX Runtime may "
                f"load any file of the bundle folder, so every one must be checksummed); "
                f"remove it or {REEXPORT}")
    if not verify:
        return
    for name, expected in manifest.files.items():
        actual = sha256_file(path / name)
        if actual != _bare(expected):
            raise BundleError(
                f"{path / name}: sha256 mismatch (expected {_bare(expected)[:16]}..., got "
                f"{actual[:16]}...): the file was modified or corrupted; copy the bundle again "
                f"or {REEXPORT}")


def read_anchors(path: PathLike, manifest: BundleManifest):
    """(anchors, recipes) of a bundle, in the manifest's order, validated against its dim."""
    apath = Path(path) / ANCHORS_FILE
    if not manifest.anchors and not apath.is_file():
        return {}, {}
    sets, recipes = read_anchor_file(apath, int(manifest.encoder.embed_dim), manifest.model)
    missing = [n for n in manifest.anchors if n not in sets]
    if missing:
        raise BundleError(f"{apath}: anchor sets {missing} listed in {BUNDLE_JSON} are missing; "
                          f"rebuild them with `quasar anchors` or {REEXPORT}")
    order = list(manifest.anchors) + [n for n in sets if n not in manifest.anchors]
    return {n: sets[n] for n in order}, {n: recipes.get(n, {}) for n in order}


def _restorable(path: Path) -> List[Path]:
    """The ``.old`` copies of a missing bundle left by a kill between the two renames of a
    swap (:func:`quasar.bundle.atomic.replace_directory`), newest first."""
    olds = [p for p, pid, _ in temp_siblings(path, ("old",)) if not pid_alive(pid)]
    return sorted(olds, key=lambda p: p.lstat().st_ctime_ns, reverse=True)


def recover_bundle(path: PathLike) -> bool:
    """Put back a bundle that an interrupted edit left only at ``.<name>.<pid>-<x>.old``
    (the writer killed between renaming the bundle aside and renaming the new copy in).
    Runs under the bundle's lock; True when ``path`` exists afterwards because of it."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    if os.path.lexists(real) or not _restorable(real):
        return False
    for _ in range(20):  # another process may be restoring it right now
        try:
            with bundle_lock(real):
                if os.path.lexists(real):
                    return True
                olds = _restorable(real)
                if not olds:
                    return False
                os.rename(olds[0], real)
                fsync_dir(real.parent)
                log.warning("bundle %s was missing after an interrupted edit (killed between "
                            "its two renames); restored it from %s, unchanged by that edit",
                            real, olds[0].name)
                return True
        except OutputLockedError:
            time.sleep(0.1)
        except (OSError, BundleError) as exc:
            log.warning("cannot restore bundle %s from its interrupted edit: %s", real, exc)
            return False
    return os.path.lexists(real)


def sweep_bundle(path: PathLike, *, locked: bool = False) -> int:
    """Remove what killed writers of the bundle ``path`` left beside it (staged edits, old
    copies, ``quasar optimize`` work folders of hundreds of MB): with ``locked`` (the caller
    holds the bundle's lock) every such temporary of another process (whatever its pid says:
    every writer holds the lock for its whole run, so a process that made one is gone, or is
    not that writer); otherwise only those whose writer process is gone, and only when the
    lock is free. Never this process's own. Returns how many were removed."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    temps = [(p, pid) for p, pid, tag in temp_siblings(real, WRITER_TEMPS + BUILD_TEMPS)
             if pid != os.getpid()  # this process's own are in use (an optimize work folder)
             and not ((not locked or tag in BUILD_TEMPS) and pid_alive(pid))]
    if not temps:
        return 0
    try:
        with bundle_lock(real):
            for p, _ in temps:
                remove_path(p)
    except (OutputLockedError, BundleError, OSError):  # a read-only folder: left as it is
        return 0
    log.info("removed %d temporary folders of interrupted edits beside %s", len(temps), real)
    return len(temps)


def _announce(bundle: Bundle) -> None:
    """The random-weights banner, once per bundle content and process."""
    if not bundle.random_init or bundle.sha256 in _ANNOUNCED:
        return
    _ANNOUNCED.add(bundle.sha256)
    log.warning(
        "!!! Bundle %s (%s) holds RANDOMLY INITIALISED weights: its scores and embeddings "
        "carry NO quality meaning (use it for tests and speed measurements only) !!!",
        bundle.path, bundle.model)


def _load(path: Path, verify: bool) -> Bundle:
    if not path.is_dir():
        raise BundleError(f"{path}: a bundle is a directory (bundle.json, encoder.onnx, "
                          "anchors.safetensors), not a file; pass the directory")
    manifest = read_manifest(path)
    check_files(path, manifest, verify)
    anchors, recipes = read_anchors(path, manifest)
    return Bundle(path=path, manifest=manifest, anchors=anchors, recipes=recipes)


def load_bundle(path: PathLike, *, verify: bool = True) -> Bundle:
    """Load and validate the bundle in ``path``.

    ``verify=False`` skips the sha256 of every file (multi-GB encoders take seconds to hash);
    structure, listing, anchors and their dims are always checked. A bundle that a killed
    edit left only under its ``.old`` name is restored first (:func:`recover_bundle`), and
    the temporaries of killed writers beside it are removed (:func:`sweep_bundle`).
    """
    path = Path(path).expanduser()
    if not path.exists() and not recover_bundle(path):
        raise BundleError(f"{path}: no such bundle directory; {REEXPORT}, or pass the right "
                          "--bundle DIR")
    bundle = _load(path, verify)
    sweep_bundle(path)
    _announce(bundle)
    return bundle


# ------------------------------------------------------------------------------ writing


def write_manifest(bundle_dir: PathLike, manifest: BundleManifest) -> Path:
    """Write bundle.json atomically through the manifest type."""
    return atomic_write_text(Path(bundle_dir) / BUNDLE_JSON, manifest.to_json())


def finalise(bundle_dir: PathLike, manifest: BundleManifest) -> BundleManifest:
    """Record the sha256 of every file of ``bundle_dir`` in ``manifest`` and write it."""
    manifest = dataclasses.replace(manifest, files=file_checksums(bundle_dir))
    write_manifest(bundle_dir, manifest)
    return manifest


@contextlib.contextmanager
def write_bundle(out_dir: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """``with write_bundle(out) as work:`` write the files into ``work``, then call
    :func:`finalise`; the directory appears at ``out`` atomically when the block succeeds
    (an existing one is replaced only with ``overwrite``); on failure nothing is left. The
    bundle's writers' lock is held meanwhile (an export over a bundle that `quasar anchors`
    or `quasar optimize` is changing is refused, naming that process), and what killed
    writers left beside ``out`` is removed first."""
    target = Path(out_dir).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    with bundle_lock(target):
        sweep_bundle(target, locked=True)
        with atomic_dir(target, overwrite=overwrite, exists_error=BundleExistsError) as work:
            yield work
            if not (work / BUNDLE_JSON).is_file():
                raise BundleError(f"{out_dir}: no {BUNDLE_JSON} was written (call finalise())")


class BundleEditor:
    """A staged copy of a bundle (see :func:`edit_bundle`). Write new or replaced files
    into :attr:`dir`; set :attr:`manifest` (a new :class:`BundleManifest`)."""

    def __init__(self, dir: Path, manifest: BundleManifest, anchors, recipes) -> None:
        self.dir = dir
        self.manifest = manifest
        self.anchors: Dict[str, np.ndarray] = dict(anchors)
        self.recipes: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in recipes.items()}
        self._anchors_changed = False

    def set_anchor_set(self, name: str, anchors: np.ndarray, recipe: Dict[str, Any]) -> None:
        """Add or replace the anchor set ``name`` ([2, D], normalised on write)."""
        if not isinstance(name, str) or not ANCHOR_NAME_RE.match(name):
            raise ValueError(f"anchor set name {name!r}: use letters, digits, '_', '-', '.' "
                             "(starting with a letter or digit)")
        dim = int(self.manifest.encoder.embed_dim)
        a = np.asarray(anchors, dtype=np.float64)
        if a.shape != (2, dim):
            raise BundleError(
                f"anchor set {name!r} has shape {list(a.shape)} but the bundle embeds into "
                f"{dim} dimensions (need [2, {dim}]); build the anchors with this bundle's "
                "encoder")
        try:
            from .anchors import l2_normalise
            a = l2_normalise(a).astype(np.float32)
        except ValueError as exc:
            raise BundleError(f"anchor set {name!r}: {exc}") from exc
        if name in self.anchors:
            log.info("replacing anchor set %r", name)
        self.anchors[name] = a
        self.recipes[name] = dict(recipe)
        self._anchors_changed = True

    def _commit(self) -> None:
        names = list(self.manifest.anchors)
        if self._anchors_changed:
            write_anchor_file(self.dir / ANCHORS_FILE, self.anchors, self.recipes)
            names += [n for n in self.anchors if n not in names]
            names = [n for n in names if n in self.anchors]
        self.manifest = dataclasses.replace(self.manifest, anchors=names)
        self.manifest = finalise(self.dir, self.manifest)


@contextlib.contextmanager
def edit_bundle(bundle_dir: PathLike) -> Iterator[BundleEditor]:
    """``with edit_bundle(b) as ed:`` change a bundle atomically.

    The bundle's lock is held throughout (a second writer is refused at once, naming this
    process), and what killed writers left beside the bundle is removed first. The bundle is
    verified (a tampered bundle is refused, not re-signed); its files are hard-linked into a
    staged sibling copy ``.<name>.<pid>-<x>.edit`` (files you replace must be written anew in
    ``ed.dir``, never modified in place); at the end checksums are recomputed, bundle.json
    is rewritten through the manifest type and the copy takes the bundle's place. On any
    error the bundle is unchanged.
    """
    bundle_dir = Path(bundle_dir).expanduser()
    with bundle_lock(bundle_dir):
        bundle = load_bundle(bundle_dir, verify=True)
        target = bundle_dir.resolve()
        sweep_bundle(target, locked=True)
        stage = temp_dir(target, "edit")
        try:
            os.chmod(stage, os.stat(target).st_mode & 0o7777)
            for name in bundle.manifest.files:
                dst = stage / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(target / name, dst)
            ed = BundleEditor(stage, bundle.manifest, bundle.anchors, bundle.recipes)
            yield ed
            ed._commit()
            _load(stage, verify=False)  # never swap in a bundle the runtime would refuse
            replace_directory(stage, target)
        except BaseException:
            remove_path(stage)
            raise


def add_anchor_set(bundle_dir: PathLike, name: str, anchors: np.ndarray,
                   recipe: Dict[str, Any], *, overwrite: bool = False) -> Path:
    """Add the anchor set ``name`` ([2, D]) to a bundle, atomically. An existing set of that
    name is replaced only with ``overwrite`` (else :class:`BundleError`: the command's
    ``--overwrite``); the check runs under the bundle's lock, with the edit."""
    with edit_bundle(bundle_dir) as ed:
        check_anchor_name_free(bundle_dir, name, ed.anchors, overwrite)
        ed.set_anchor_set(name, anchors, recipe)
    return Path(bundle_dir)


def check_anchor_name_free(bundle_dir: PathLike, name: str, existing, overwrite: bool) -> None:
    """Refuse to replace the anchor set ``name`` of a bundle without ``overwrite`` (every
    way of adding a set - prompt data, --good/--bad, --scores - behaves the same)."""
    if name in existing and not overwrite:
        raise BundleError(f"{bundle_dir}: the bundle already has an anchor set {name!r}; choose "
                          "another --name, or pass --overwrite to replace it")


def bundle_anchor_set(bundle_dir: PathLike, name: str):
    """(anchors [2, D] float32, recipe) of the set ``name`` of a bundle."""
    bundle = load_bundle(bundle_dir, verify=False)
    if name not in bundle.anchors:
        raise BundleError(f"{bundle_dir}: no anchor set {name!r} (has {bundle.anchor_names}); "
                          + ("this model has no text tower - use image prompt data"
                             if name == "text" else "add it with `quasar anchors`"))
    return bundle.anchors[name], dict(bundle.recipes.get(name, {}))


__all__ = ["Bundle", "BundleEditor", "add_anchor_set", "bundle_anchor_set", "check_anchor_set",
           "check_anchor_name_free", "check_files", "edit_bundle", "file_checksums", "finalise",
           "load_bundle", "read_anchors", "read_manifest", "recover_bundle", "sha256_file",
           "sweep_bundle", "write_bundle", "write_manifest"]
