"""Object storage for inputs and outputs: ``s3://``, ``gs://`` (``gcs://``) and the other
fsspec URLs a run may name, through the ecosystem's own clients (fsspec with s3fs / gcsfs,
imported only when a URL needs them).

This is the one place that turns a URL into a filesystem; the readers (runtime/sources.py,
runtime/inputs.py) and the writers (runtime/writers.py, runtime/ray/parts.py) ask it, so a
missing client, missing credentials or a network failure read the same everywhere.

Settings come from the libraries' standard places: s3fs reads ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` / ``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto);
gcsfs reads Google's application-default credentials (``GOOGLE_APPLICATION_CREDENTIALS``)
and ``STORAGE_EMULATOR_HOST``; proxies come from ``HTTPS_PROXY``.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple, Union

from quasar.access import denied_message, failed_message, is_auth_error
from quasar.bundle.atomic import pid_alive
from quasar.errors import InputError, MissingDependencyError, install_hint
from quasar.text import safe_text

# scheme -> (extra that installs its client, the client's module)
SCHEMES: Dict[str, Tuple[str, str]] = {
    "s3": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"),
    "gcs": ("gcs", "gcsfs"),
}
# read-only schemes (inputs only): plain HTTP(S) through fsspec's aiohttp filesystem
READ_ONLY_SCHEMES: Dict[str, Tuple[str, str]] = {
    "http": ("remote", "aiohttp"),
    "https": ("remote", "aiohttp"),
}
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.S)

_fs_cache: Dict[Tuple[str, str], Any] = {}
_fs_lock = threading.Lock()


def url_scheme(spec: Any) -> Optional[str]:
    """The lower-case scheme of a storage URL this runtime reads (``s3``, ``gs``, ...), or
    None for a local path (including ``C:\\``-like names and unknown schemes, which stay
    local paths)."""
    if not isinstance(spec, str):
        return None
    m = _URL_RE.match(spec)
    if not m:
        return None
    scheme = m.group(1).lower()
    return scheme if scheme in SCHEMES or scheme in READ_ONLY_SCHEMES else None


def is_url(spec: Any) -> bool:
    """True for an object-storage / HTTP URL (``s3://b/k``), False for a local path."""
    return url_scheme(spec) is not None


def is_writable_url(spec: Any) -> bool:
    """True for a URL an output may be written to (``s3://``, ``gs://``, ``gcs://``)."""
    return url_scheme(spec) in SCHEMES


def url_join(base: str, rel: str) -> str:
    """``rel`` (a POSIX relative path) against the *folder* of the URL ``base``:
    ``url_join("s3://b/d/x.parquet", "img/a.jpg") == "s3://b/d/img/a.jpg"``. ``..`` parts
    are resolved, but never above the bucket."""
    scheme = url_scheme(base)
    if scheme is None:
        raise ValueError(f"not a URL: {base!r}")
    rest = base.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    parts = [p for p in key.split("/")[:-1] if p]
    for p in rel.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return f"{scheme}://{bucket}/" + "/".join(parts)


def _missing(url: str, scheme: str, exc: Exception) -> MissingDependencyError:
    extra, module = SCHEMES.get(scheme) or READ_ONLY_SCHEMES[scheme]
    return MissingDependencyError(
        f"{safe_text(url)}: {scheme}:// paths need {module}, which is not installed: "
        f"{install_hint(extra)} (or {install_hint('remote')} for every store)")


def filesystem(url: str) -> Tuple[Any, str]:
    """``(fs, path)`` for a storage URL: the fsspec filesystem (one per scheme and process,
    so its connection pool and listing cache are shared) and the path in it
    (``bucket/key``). Raises MissingDependencyError with the pip command when the client
    is not installed."""
    scheme = url_scheme(url)
    if scheme is None:
        raise ValueError(f"not a storage URL: {url!r}")
    try:
        import fsspec
    except ImportError as exc:
        raise _missing(url, scheme, exc) from exc
    key = (scheme, "")
    with _fs_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            try:
                # our own cache is the one per process: a fresh instance after
                # reset_filesystems() (fsspec's instance cache would hand back the old one,
                # with the old endpoint and credentials)
                fs = fsspec.filesystem(scheme, skip_instance_cache=True)
            except ImportError as exc:
                raise _missing(url, scheme, exc) from exc
            _fs_cache[key] = fs
    return fs, fs._strip_protocol(url)


def reset_filesystems() -> None:
    """Forget the per-process filesystems (after the environment's endpoint or credentials
    changed, e.g. between tests, or in a forked child)."""
    with _fs_lock:
        _fs_cache.clear()


def storage_error(url: str, what: str, exc: BaseException, cls: type = InputError) -> Exception:
    """One message for a failed storage call: access denied (with the credentials hint of
    the scheme) or a network / service failure (with the proxy hint)."""
    scheme = url_scheme(url) or ""
    if is_auth_error(exc):
        return cls(denied_message(url, scheme, what, exc))
    return cls(failed_message(url, what, exc, "check the network (proxies: HTTPS_PROXY), the "
                              "endpoint (AWS_ENDPOINT_URL) and the URL, then run again"))


def check_client(url: str) -> None:
    """Raise MissingDependencyError (with the pip command) now when ``url``'s client is not
    installed: once, before a run does any work."""
    filesystem(url)


def invalidate_caches() -> None:
    """Drop fsspec's listing caches of the filesystems made so far, so that a run (or a
    rerun in the same process) sees the objects as they are now."""
    with _fs_lock:
        filesystems = list(_fs_cache.values())
    for fs in filesystems:
        try:
            fs.invalidate_cache()
        except Exception:  # noqa: BLE001 - a cache that cannot be dropped is only stale
            pass


def _url_of(url: str, path: str) -> str:
    """The URL of ``path`` (``bucket/key``, as fsspec lists it) in the scheme of ``url``."""
    return f"{url_scheme(url)}://{path.lstrip('/')}"


def failure(url: str, exc: BaseException, what: str) -> Tuple[str, str]:
    """``(row status, message)`` of a failed read of ``url``: ``not_found`` (no such object),
    ``permission_denied`` (access denied / no credentials: the credentials settings named),
    ``read_error`` (network or service failure: the proxy / endpoint settings named)."""
    if isinstance(exc, FileNotFoundError):
        return "not_found", f"{safe_text(url)}: no such object; check the URL"
    if isinstance(exc, IsADirectoryError):
        return "not_a_file", f"{safe_text(url)}: a folder (prefix), not a {what}"
    err = storage_error(url, f"reading the {what}", exc)
    return ("permission_denied" if is_auth_error(exc) else "read_error"), str(err)


# --------------------------------------------------------------------------- listing
def is_hidden_key(rel: str) -> bool:
    """True when a part of the key below the listed prefix starts with ``.`` (hidden, as
    hidden files and folders are skipped by a local walk)."""
    return any(p.startswith(".") for p in rel.split("/") if p)


def find_urls(url: str) -> List[str]:
    """Every object under the prefix ``url`` (a "folder"), as URLs, in the order a local walk
    gives (depth first, names sorted at every level: sorted by the tuple of key parts).
    Raises what the client raises (callers turn it into a row)."""
    fs, path = filesystem(url)
    root = path.rstrip("/")
    keys = fs.find(root, withdirs=False, detail=False)
    out = []
    for k in keys:
        k = k.lstrip("/")
        rel = k[len(root):].lstrip("/") if k.startswith(root) else k
        if rel and not rel.endswith("/"):
            out.append((tuple(rel.split("/")), _url_of(url, k)))
    out.sort()
    return [u for _, u in out]


def glob_urls(pattern: str) -> List[Tuple[str, bool]]:
    """``(URL, is a folder)`` of the objects and prefixes matching a glob URL (``*``, ``?``,
    ``[...]``, ``**``), sorted."""
    fs, path = filesystem(pattern)
    found = fs.glob(path, detail=True)
    return sorted((_url_of(pattern, p), (d or {}).get("type") == "directory")
                  for p, d in found.items())


def is_prefix(url: str) -> bool:
    """True when ``url`` names a "folder": a prefix with objects under it."""
    fs, path = filesystem(url)
    return bool(fs.isdir(path.rstrip("/")))


def open_text(url: str):
    """``url`` opened as UTF-8 text, streamed (a list of inputs)."""
    fs, path = filesystem(url)
    return fs.open(path, "rt", encoding="utf-8", errors="surrogateescape")


# --------------------------------------------------------------------------- whole objects
#: a remote dataset file (shard, Parquet) larger than this is not downloaded (a row);
#: ``QUASAR_SPOOL_MAX_BYTES`` changes it
MAX_SPOOL_BYTES = 64 << 30
SPOOL_ENV = "QUASAR_SPOOL_DIR"
_CHUNK = 16 << 20   # one ranged GET per 16 MiB: a few dozen requests for a 1 GB shard
_swept: set = set()


def spool_cap() -> int:
    v = os.environ.get("QUASAR_SPOOL_MAX_BYTES", "").strip()
    try:
        return int(v) if v else MAX_SPOOL_BYTES
    except ValueError:
        raise InputError(f"QUASAR_SPOOL_MAX_BYTES={safe_text(v)!r} is not a number of bytes; "
                         "unset it or give an integer") from None


def spool_dir() -> str:
    """Where remote dataset files are spooled: ``$QUASAR_SPOOL_DIR`` or ``quasar-spool`` in
    the system's temporary folder (a local disk: the readers need a local file)."""
    base = os.environ.get(SPOOL_ENV) or os.path.join(tempfile.gettempdir(), "quasar-spool")
    os.makedirs(base, exist_ok=True)
    return base


def sweep_spool(d: str) -> int:
    """Remove the spool files of processes that are gone (a killed run's leftovers: every
    spool file's name starts with its process id). Returns how many were removed."""
    removed = 0
    if os.name == "nt":  # os.kill(pid, 0) would end the process there
        return 0
    try:
        names = os.listdir(d)
    except OSError:
        return 0
    for n in names:
        m = re.match(r"^(\d+)-", n)
        if not m or pid_alive(int(m.group(1))):
            continue
        try:
            os.remove(os.path.join(d, n))
            removed += 1
        except OSError:
            pass
    return removed


class Spooled:
    """A remote dataset file streamed into a local temporary file of the spool folder (the
    hardened local readers then run on it), in the background or not.

    ``path`` is the local file once :meth:`wait` returns with ``failure`` None; ``failure``
    is the row's ``(status, message)`` otherwise (missing object, access denied, network
    failure, over ``cap``, spool disk full). :meth:`close` deletes the file (and stops a
    download still running); it runs when the shard is done, on errors and on
    KeyboardInterrupt, and a killed process's files are swept by the next one
    (:func:`sweep_spool`)."""

    def __init__(self, url: str, what: str = "shard", cap: Optional[int] = None):
        self.url, self.what = url, what
        self.cap = spool_cap() if cap is None else cap
        self.failure: Optional[Tuple[str, str]] = None
        self.bytes = 0
        self.seconds = 0.0
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None
        d = spool_dir()
        if d not in _swept:
            _swept.add(d)
            sweep_spool(d)
        base = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[-80:]
        fd, self.path = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=f"-{base}", dir=d)
        os.close(fd)

    def start(self) -> "Spooled":
        """Download in a background thread (the next shard, while this one is scored)."""
        self._thread = threading.Thread(target=self.run, name="quasar-spool", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> "Spooled":
        if self._thread is None and not self._done.is_set():
            self.run()
        self._done.wait()
        return self

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            self.failure = self._download()
        except BaseException as exc:  # noqa: BLE001 - the row says it; a Ctrl-C re-raises
            self.failure = failure(self.url, exc, self.what)
            if not isinstance(exc, Exception):
                self._done.set()
                self.close()
                raise
        finally:
            self.seconds = time.perf_counter() - t0
            self._done.set()

    def _download(self) -> Optional[Tuple[str, str]]:
        url, what, cap = self.url, self.what, self.cap
        fs, path = filesystem(url)
        try:
            size = _object_size(fs, path, url, what, cap,
                                "limit for one remote file (spooled to local disk before "
                                "reading); not downloaded - split it, or raise "
                                "QUASAR_SPOOL_MAX_BYTES")
        except _Refused as r:
            return r.row
        except Exception as exc:  # noqa: BLE001 - any client failure is this input's row
            return failure(url, exc, what)
        d = os.path.dirname(self.path)
        if size:
            free = shutil.disk_usage(d).free
            if size > free:
                return "read_error", (f"{safe_text(url)}: the {what} is {size:,} bytes and the "
                                      f"spool folder {d} has {free:,} bytes free; set "
                                      f"{SPOOL_ENV} to a folder on a larger local disk")
        n = 0
        try:
            with fs.open(path, "rb", block_size=_CHUNK, cache_type="none") as src, \
                    open(self.path, "wb") as out:
                while not self._cancel.is_set():
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    n += len(chunk)
                    if n > cap:
                        return "too_large", (f"{safe_text(url)}: the {what} is over the {cap:,}-"
                                             "byte limit for one remote file (it grew while "
                                             "being read); not read - raise "
                                             "QUASAR_SPOOL_MAX_BYTES")
                    out.write(chunk)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return "read_error", (f"{safe_text(url)}: the spool folder {d} is full; set "
                                      f"{SPOOL_ENV} to a folder on a larger local disk")
            return failure(url, exc, what)
        except Exception as exc:  # noqa: BLE001
            return failure(url, exc, what)
        self.bytes = n
        if self._cancel.is_set():
            return "read_error", f"{safe_text(url)}: download cancelled"
        return None

    def close(self) -> None:
        """Stop the download (if running) and delete the local file."""
        self._cancel.set()
        try:
            os.remove(self.path)
        except OSError:
            pass
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=30)
            try:  # the thread may have re-created it by opening for writing
                os.remove(self.path)
            except OSError:
                pass

    def __enter__(self) -> "Spooled":
        return self.wait()

    def __exit__(self, *exc) -> None:
        self.close()


class _Refused(Exception):
    """An object that is not read, with its row: ``status`` and ``message``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.row = (status, message)


def _object_size(fs: Any, path: str, url: str, what: str, cap: int, over: str
                 ) -> Optional[int]:
    """The size of the object at ``url`` (None when the store does not say). Raises
    :class:`_Refused` for a prefix (``not_a_file``) or an object over ``cap`` (``too_large``;
    ``over`` ends the message); client errors propagate."""
    info = fs.info(path)
    if info.get("type") == "directory":
        raise _Refused("not_a_file", f"{safe_text(url)}: a folder (prefix), not a {what}; give "
                       "the object itself, or end the URL with / to scan the folder")
    size = info.get("size")
    if size is not None and size > cap:
        raise _Refused("too_large", f"{safe_text(url)}: the {what} is {size:,} bytes, over the "
                       f"{cap:,}-byte {over}")
    return size


def read_object(url: str, cap: int, what: str = "image") -> Union[bytes, Tuple[str, str]]:
    """The bytes of a (small) object, its size checked first against ``cap``; or the row's
    ``(status, message)`` (``not_found``, ``permission_denied``, ``read_error``,
    ``too_large``, ``not_a_file``, ``empty_file``)."""
    try:
        fs, path = filesystem(url)
        size = _object_size(fs, path, url, what, cap,
                            "limit for one image; not read - re-encode or drop it")
        if size == 0:
            return "empty_file", (f"{safe_text(url)}: the object is empty (0 bytes); "
                                  "re-upload it")
        data = fs.cat_file(path, start=0, end=cap + 1)  # never more than the cap
    except _Refused as r:
        return r.row
    except Exception as exc:  # noqa: BLE001 - any client failure is this input's row
        return failure(url, exc, what)
    if len(data) > cap:
        return "too_large", (f"{safe_text(url)}: the {what} is over the {cap:,}-byte limit "
                             "for one image; not read - re-encode or drop it")
    return data
