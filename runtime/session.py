"""ONNX Runtime session for an encoder: provider choice, threads, graph optimisation.

``device="cuda"`` never falls back silently: when the CUDA execution provider is not
installed, or ONNX Runtime could not activate it (CUDA/cuDNN libraries missing), a
:class:`DeviceError` says how to fix the install. ``device="auto"`` uses CUDA when it works
and the CPU otherwise.

**Optimised-graph cache.** Building a CPU session spends most of its time parsing the
protobuf and optimising the graph. The first session for an encoder (identified by the
bundle's sha256, never re-hashed) saves ONNX Runtime's optimised graph under
``$QUASAR_HOME/ort-cache/`` with its weights as an external-data file; later sessions load
that with graph optimisation off, and ONNX Runtime memory-maps the weights. The entry's
``key.json`` records the sha256 of the cached graph and weights with their stat fingerprint
(device, inode, size, mtime, ctime); on every load the graph is re-hashed and the weights
are re-hashed whenever their fingerprint changed (any write or replacement changes ctime).
An entry that does not match (edited, replaced, truncated) is removed and rebuilt from the
bundle with a warning, so the cache can never change a score.

``key.json`` is data beside the cache, so it is not trusted by itself: it is *sealed*, an
HMAC-SHA256 keyed by a per-user secret (``$QUASAR_HOME/ort-cache.key``, 32 random bytes,
mode 0600, outside the cache folder) and by the sha256 of the bundle's encoder that the
bundle's checksum verification vouched for. An entry whose weights were changed and whose
hashes and stats in ``key.json`` were rewritten to match fails the seal and is rebuilt from
the bundle; an entry is only ever valid for the encoder whose verified sha256 built it. (Who
can read that secret can also rewrite your bundles and their checksums: the cache adds no
weaker link.) The key also holds
the onnxruntime version, the optimisation level, the providers and the CPU identity (the
``ORT_ENABLE_ALL`` layout transforms are hardware-specific). The cache never makes scoring fail:
any problem with it falls back to the normal path. ``QUASAR_ORT_CACHE=0`` or
``SessionConfig(ort_cache=False)`` turns it off.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

from quasar.bundle.atomic import atomic_write_text, fsync_dir, temp_name
from quasar.constants import DEVICES  # noqa: F401 (one definition; re-exported)
from quasar.errors import BundleError, DeviceError, install_hint, optional_import

log = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

GPU_INSTALL_HINT = (
    f"install the GPU build: pip uninstall -y onnxruntime && {install_hint('gpu')} "
    "(onnxruntime-gpu; never keep onnxruntime and onnxruntime-gpu installed together - they "
    "overwrite each other and the CUDA provider disappears), and make sure the CUDA and cuDNN "
    "libraries that onnxruntime-gpu needs are installed; or use device='cpu'"
)


def import_onnxruntime() -> Any:
    """``import onnxruntime`` with an install hint when it is missing."""
    return optional_import("onnxruntime", "cpu", "the QUASAR runtime",
                           also=f"(CPU) or {install_hint('gpu')} (CUDA) - not both")


@dataclass(frozen=True)
class SessionConfig:
    """How to run an encoder: ``device`` auto|cpu|cuda, CUDA ``device_id``, thread counts
    (None = ONNX Runtime's default: one intra-op thread per physical core)."""

    device: str = "auto"
    device_id: int = 0
    intra_op_threads: Optional[int] = None
    inter_op_threads: Optional[int] = None
    ort_cache: Optional[bool] = None  # None: on unless the environment has QUASAR_ORT_CACHE=0

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


# ---------------------------------------------------------------- optimised-graph cache
ORT_CACHE_ENV = "QUASAR_ORT_CACHE"
ORT_CACHE_DIR = "ort-cache"
ORT_CACHE_SECRET = "ort-cache.key"  # beside the cache folder, not in it
CACHE_FORMAT = 2  # 2: key.json sealed (HMAC with the per-user secret and the encoder's sha256)
_CACHED_MODEL = "model.onnx"
_CACHED_DATA = "model.onnx.data"  # weights: memory-mapped by ONNX Runtime when loaded
_STALE_TMP_S = 3600.0


def ort_cache_enabled(cfg: SessionConfig) -> bool:
    """``cfg.ort_cache`` when set, else off only when ``QUASAR_ORT_CACHE`` is 0/false/no/off."""
    if cfg.ort_cache is not None:
        return bool(cfg.ort_cache)
    return os.environ.get(ORT_CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def ort_cache_root() -> Path:
    """``$QUASAR_HOME/ort-cache``."""
    from quasar.home import quasar_home

    return quasar_home() / ORT_CACHE_DIR


def cpu_identity() -> str:
    """Machine type plus a hash of the CPU model name and feature flags (``/proc/cpuinfo``)."""
    lines: List[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            seen = set()
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "flags", "features", "cpu implementer", "cpu part") \
                        and key not in seen:
                    seen.add(key)
                    lines.append(line.strip())
    except OSError:
        lines.append(platform.processor())
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return f"{platform.machine()}-{digest}"


def _cache_entry(ort: Any, model: str, model_sha256: str,
                 providers: List[Any]) -> Tuple[Path, dict]:
    key = {
        "format": CACHE_FORMAT,
        "model_sha256": str(model_sha256).lower().removeprefix("sha256:"),
        "model_bytes": os.path.getsize(model),
        "onnxruntime": ort.__version__,
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "providers": [p if isinstance(p, str) else p[0] for p in providers],
        "cpu": cpu_identity(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return ort_cache_root() / f"{key['model_sha256'][:16]}-{digest}", key


def _read_secret(path: Path) -> bytes:
    """The secret in ``path``: a regular file (not a symlink) of this user, readable by no
    one else, of 32 bytes; OSError otherwise (FileNotFoundError when there is none)."""
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise OSError(f"{path}: the cache secret must be a private regular file of this "
                          "user (mode 0600); remove it to get a new one")
        data = os.read(fd, 64)
    finally:
        os.close(fd)
    if len(data) != 32:
        raise OSError(f"{path}: not a quasar cache secret ({len(data)} bytes); remove it")
    return data


def _secret() -> bytes:
    """The per-user secret that seals cache entries (created once, 0600, outside the cache
    folder; written whole to a temporary file and linked into place, so no reader sees it
    half-written). OSError when it can neither be read nor created, or is not private: the
    cache is then not used."""
    from quasar.home import quasar_home

    path = quasar_home() / ORT_CACHE_SECRET
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process made it first: use that one
        except FileExistsError:
            pass
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return _read_secret(path)


def _seal(record: dict) -> str:
    """HMAC-SHA256 of a key.json record (without its seal), keyed by the per-user secret and
    the encoder's verified sha256 the record is for."""
    import hmac

    body = {k: v for k, v in record.items() if k != "seal"}
    key = _secret() + str(body.get("model_sha256", "")).encode()
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _write_key(entry: Path, record: dict) -> None:
    record = {k: v for k, v in record.items() if k != "seal"}
    atomic_write_text(entry / "key.json", json.dumps(dict(record, seal=_seal(record)),
                                                     indent=1, sort_keys=True) + "\n")


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(path: Path) -> List[int]:
    """(device, inode, size, mtime_ns, ctime_ns): any write to the file, or a file put in
    its place, changes it (a user cannot set ``ctime`` back)."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _cached_files(entry: Path) -> dict:
    """sha256 of the cached graph and its weights file (those that exist)."""
    return {name: _file_sha256(entry / name) for name in (_CACHED_MODEL, _CACHED_DATA)
            if (entry / name).is_file()}


def _cached_fingerprints(entry: Path) -> dict:
    return {name: _fingerprint(entry / name) for name in (_CACHED_MODEL, _CACHED_DATA)
            if (entry / name).is_file()}


def _verify_cached(entry: Path, key: dict) -> Optional[str]:
    """None when the entry's files match the sha256 recorded in its key.json, else why not.

    The graph (~0.2 MB) is re-hashed on every load. The weights (hundreds of MB: hashing
    them would cost more than the cache saves) are re-hashed only when their stat
    fingerprint differs from the one recorded with the hash (then the fingerprint is
    updated when the content still matches, e.g. after a copy of ``$QUASAR_HOME``)."""
    try:
        stored = json.loads((entry / "key.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"no readable key.json ({exc})"
    if not isinstance(stored, dict):
        return "key.json is not an object"
    import hmac

    try:
        sealed = hmac.compare_digest(str(stored.get("seal", "")), _seal(stored))
    except OSError as exc:
        return f"cannot check its seal ({exc})"
    if not sealed:
        return ("key.json is not sealed for this encoder by this user's quasar (edited, "
                "forged, or written for another bundle)")
    expected = stored.get("files")
    prints = stored.get("fingerprints") or {}
    if not isinstance(expected, dict) or _CACHED_MODEL not in expected:
        return "key.json records no file checksums (written by an older quasar)"
    if {k: v for k, v in stored.items() if k not in ("files", "fingerprints", "seal")} != key:
        return "key.json describes another encoder or machine"
    present = {n for n in (_CACHED_MODEL, _CACHED_DATA) if (entry / n).is_file()}
    if present != set(expected):
        return f"{', '.join(sorted(present ^ set(expected)))} missing or added since it was cached"
    rehashed = False
    for name in sorted(present):
        if name == _CACHED_MODEL or _fingerprint(entry / name) != prints.get(name):
            if _file_sha256(entry / name) != expected[name]:
                return f"{name} changed since it was cached"
            rehashed = rehashed or name != _CACHED_MODEL
    if rehashed:  # same content, new inode / times (a copied cache): remember the new stat
        try:
            _write_key(entry, dict(stored, fingerprints=_cached_fingerprints(entry)))
        except OSError:
            pass
    return None


def _load_cached(ort: Any, entry: Path, cfg: SessionConfig, providers: List[Any],
                 key: Optional[dict] = None) -> Any:
    """The cached optimised graph as a session, or None (missing / unusable / not matching
    its recorded sha256: then removed, to be rebuilt)."""
    cached = entry / _CACHED_MODEL
    if not cached.is_file():
        return None
    if key is not None:
        why = _verify_cached(entry, key)
        if why is not None:
            log.warning("ignoring the ONNX Runtime cache %s: %s; rebuilding it from the bundle",
                        entry, why)
            _rmtree(entry)
            return None
    so = session_options(cfg)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimised
    try:
        sess = ort.InferenceSession(str(cached), sess_options=so, providers=providers)
    except Exception as exc:  # corrupt / truncated / foreign file: rebuild it
        log.warning("ignoring the unusable ONNX Runtime cache %s (%s); rebuilding it", entry,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        _rmtree(entry)
        return None
    log.debug("loaded the optimised graph from %s", cached)
    sess.quasar_ort_cache = "hit"
    sess.quasar_model_path = str(cached)
    return sess


def _store_cached(ort: Any, model: str, entry: Path, key: dict, cfg: SessionConfig,
                  providers: List[Any]) -> Any:
    """Build the session from ``model`` and save its optimised graph into ``entry``
    (written in a temporary directory, then renamed). None when that fails."""
    tmp = temp_name(entry)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in entry.parent.glob(f".{entry.name}.*.tmp"):  # left by killed processes
            try:
                if now - old.stat().st_mtime > _STALE_TMP_S:
                    _rmtree(old)
            except OSError:
                pass
        tmp.mkdir()
    except OSError as exc:
        log.debug("ONNX Runtime cache disabled: cannot write %s (%s)", entry.parent, exc)
        _rmtree(tmp)
        return None
    so = session_options(cfg)
    so.optimized_model_filepath = str(tmp / _CACHED_MODEL)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                _CACHED_DATA)
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        sess = ort.InferenceSession(model, sess_options=so, providers=providers)
    except Exception as exc:
        log.debug("could not build and save the optimised graph of %s (%s)", model, exc)
        _rmtree(tmp)
        return None
    sess.quasar_ort_cache = "miss"
    sess.quasar_model_path = model
    try:
        if not (tmp / _CACHED_MODEL).is_file():
            raise OSError("ONNX Runtime wrote no optimised model")
        # bind the cached files to the bundle: their sha256, checked on every load, sealed
        # with the per-user secret and the encoder's verified sha256
        _write_key(tmp, dict(key, files=_cached_files(tmp),
                             fingerprints=_cached_fingerprints(tmp)))
        # atomic; fails when another process stored it first. A rename keeps the files'
        # inodes and times, so the fingerprints stay valid.
        os.rename(tmp, entry)
        fsync_dir(entry.parent)
        sess.quasar_ort_cache = "stored"
        log.debug("saved the optimised graph of %s to %s", model, entry)
    except OSError as exc:
        log.debug("optimised graph of %s not cached (%s)", model, exc)
        _rmtree(tmp)
    return sess


def _cpu_session(ort: Any, model: str, cfg: SessionConfig, model_sha256: Optional[str],
                 external_data: bool) -> Any:
    providers: List[Any] = [CPU_EP]
    if model_sha256 and not external_data and ort_cache_enabled(cfg):
        try:
            entry, key = _cache_entry(ort, model, model_sha256, providers)
            sess = _load_cached(ort, entry, cfg, providers, key)
            if sess is None:
                sess = _store_cached(ort, model, entry, key, cfg, providers)
            if sess is not None:
                return sess
        except Exception as exc:  # the cache must never make scoring fail
            log.warning("ONNX Runtime cache skipped for %s: %s", model, exc)
    sess = _new_session(ort, model, session_options(cfg), providers)
    sess.quasar_ort_cache = None
    sess.quasar_model_path = model
    return sess


def create_session(model_path: Union[str, Path], cfg: SessionConfig = SessionConfig(), *,
                   model_sha256: Optional[str] = None, external_data: bool = False) -> Any:
    """An ``onnxruntime.InferenceSession`` on the device ``cfg`` asks for.

    On the CPU, with ``model_sha256`` (the bundle manifest's checksum of ``model_path``) and
    the cache enabled, the optimised graph is cached (see the module docstring); models with
    ONNX ``external_data`` (> 2 GB) are not cached. ``session.quasar_ort_cache`` says what
    happened: ``"hit"``, ``"stored"``, ``"miss"`` (built, not saved) or None (cache not used).
    """
    ort = import_onnxruntime()
    model = str(model_path)
    so = session_options(cfg)
    available = ort.get_available_providers()
    if cfg.device == "cpu":
        return _cpu_session(ort, model, cfg, model_sha256, external_data)
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
    return _cpu_session(ort, model, cfg, model_sha256, external_data)


def active_device(session: Any) -> str:
    """``cuda`` or ``cpu``: where ``session`` actually runs."""
    return "cuda" if session.get_providers()[0] == CUDA_EP else "cpu"
