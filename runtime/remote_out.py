"""Outputs on object storage (``--out s3://b/scores.csv``, ``--save-embeddings gs://b/e.npy``,
``--engine ray --out s3://b/scores/``): written locally, published whole.

Why this shape: an object store has no append, no rename and no ``flock``, but it has one
thing a file system lacks - a PUT (also a multipart upload) is atomic: a reader sees the old
object or the whole new one, never half. So every remote output is written by the local
writers, unchanged (runtime/writers.py, runtime/ray/parts.py: the same journals, torn-tail
repair, identity sidecars), into a *staging* folder ``$QUASAR_HOME/staging/<sha256(url)>/``
and then uploaded with one put per file:

* local engine: a checkpoint of the table (and the embeddings journal) every
  :data:`CHECKPOINT_S` seconds and at the end, so a killed run loses at most that much;
  ``--resume`` downloads what the store holds (or reuses the staging folder of a killed run
  on this machine when the store still holds exactly what that run last uploaded) and
  continues as a local resume does; ``--overwrite`` uploads only at the end (the old
  output is replaced only by a complete one);
* Ray: each part is written in the staging folder and put to ``<out>/part.parquet`` (its
  embeddings first): a part key exists only when the part is complete.

One writer at a time: :class:`RemoteLock`, a lock object created with a conditional put
(S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``), renewed by a heartbeat, taken over
when its lease has expired (the holder was killed). docs/remote.md, "Outputs on object
storage".
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from quasar.errors import OutputError, OutputLockedError, UsageError
from quasar.home import quasar_home
from quasar.text import safe_text

from .storage import filesystem, is_url, is_writable_url, storage_error, url_scheme

log = logging.getLogger("quasar.score")

#: seconds between two checkpoints of a local run's remote outputs
CHECKPOINT_S = 60.0
#: test seam: another checkpoint interval (seconds); unset in normal use
_CHECKPOINT_ENV = "QUASAR_CHECKPOINT_S"
#: seconds a lock object stays valid without a heartbeat (renewed every third of it)
LEASE_S = 120.0
_LEASE_ENV = "QUASAR_LOCK_LEASE_S"  # test seam
LOCK_SUFFIX = ".lock"
DIR_LOCK = "_quasar.lock"  # the lock object of a Ray output directory on a store
_MARKER = ".synced.json"   # in a staging folder: what its last upload left on the store


# --------------------------------------------------------------------------- URLs
def normalize_url(url: str) -> str:
    """One spelling per object: scheme lower-case (``gcs`` is ``gs``), no duplicate or
    trailing slashes. Outputs and inputs are compared in this form."""
    scheme = url_scheme(url) or ""
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = re.sub(r"/+", "/", rest).strip("/")
    return f"{'gs' if scheme == 'gcs' else scheme}://{rest}"


def check_writable(url: Optional[str], flag: str) -> None:
    """Refuse an output URL of a read-only scheme (``https://``) before anything runs."""
    if url is not None and is_url(url) and not is_writable_url(url):
        raise UsageError(f"{flag} {safe_text(url)}: {url_scheme(url)}:// is read-only (inputs "
                         "only); write to a local path, s3:// or gs://")


def staging_dir(url: str) -> Path:
    """``$QUASAR_HOME/staging/<sha256(url)[:16]>``: where the outputs of ``url`` are written
    before they are uploaded (the same folder for the same URL, so a killed run's rows are
    found by the next ``--resume`` on this machine)."""
    h = hashlib.sha256(normalize_url(url).encode("utf-8", "surrogateescape")).hexdigest()
    return quasar_home() / "staging" / h[:16]


def _etag(info: Dict[str, Any]) -> str:
    return str(info.get("ETag") or info.get("etag") or info.get("generation")
               or info.get("md5Hash") or info.get("size"))


def _error(url: str, what: str, exc: BaseException) -> Exception:
    if isinstance(exc, (OutputError, UsageError)):
        return exc
    return storage_error(url, what, exc, cls=OutputError)


def remote_info(url: str) -> Optional[Dict[str, Any]]:
    """The store's description of the object ``url`` (None when absent)."""
    fs, path = filesystem(url)
    try:
        fs.invalidate_cache(path)
        return fs.info(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any store failure: one message
        raise _error(url, "reading its description", exc) from exc


def upload(local: str, url: str) -> None:
    """Put the local file ``local`` at ``url``: one PUT (or multipart upload), atomic for a
    reader."""
    fs, path = filesystem(url)
    try:
        fs.put_file(str(local), path)
        fs.invalidate_cache(path)
    except Exception as exc:  # noqa: BLE001
        raise _error(url, "uploading", exc) from exc


def download(url: str, local: str) -> None:
    """Get ``url`` into ``local`` (a temporary sibling renamed into place)."""
    from quasar.bundle.atomic import temp_name

    fs, path = filesystem(url)
    tmp = temp_name(local)
    try:
        fs.get_file(path, str(tmp))
        os.replace(tmp, local)
    except Exception as exc:  # noqa: BLE001
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _error(url, "downloading", exc) from exc


def remove(url: str) -> None:
    fs, path = filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001
        raise _error(url, "removing", exc) from exc


# --------------------------------------------------------------------------- the lock
def _env_seconds(name: str, default: float) -> float:
    """Seconds from the environment variable ``name`` (a test seam), else ``default``."""
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


class RemoteLock:
    """One writer at a time on object storage: the lock object ``url`` (``<out>.lock``, or
    ``<out dir>/_quasar.lock``) holding ``{host, pid, run, time, lease_s}``.

    * created with a conditional put (S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``):
      of two runs starting together exactly one gets it;
    * renewed every ``lease_s / 3`` by a heartbeat thread (S3: a put conditional on the
      ETag the holder last wrote, so a holder that lost the lock notices);
    * a lock whose lease expired (its holder was killed) is taken over, with a warning; on
      S3 conditionally on the stale ETag, so of two runs taking over one wins;
    * released (deleted) at the end, after checking that it is still this run's.

    Where the store ignores the conditions (an S3 clone without conditional writes), every
    write is read back and compared: two runs that start within the same fraction of a
    second could then both believe they won (docs/remote.md)."""

    def __init__(self, url: str, what: str) -> None:
        self.url, self.what = normalize_url(url), what
        self.fs, self.path = filesystem(self.url)
        self.lease_s = _env_seconds(_LEASE_ENV, LEASE_S)
        self.run = uuid.uuid4().hex
        self.etag: Optional[str] = None
        self.lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "run": self.run,
                           "time": time.time(), "lease_s": self.lease_s}).encode()

    def _read(self) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """(lock content, its ETag); (None, None) when there is no lock object."""
        try:
            self.fs.invalidate_cache(self.path)
            info = self.fs.info(self.path)
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None, None
        try:
            d = json.loads(data)
            if not isinstance(d, dict):
                raise ValueError
        except ValueError:
            d = {"time": 0.0, "lease_s": 0.0, "host": "?", "pid": "?"}  # garbage: stale
        return d, _etag(info)

    def _put(self, *, create: bool = False, if_match: Optional[str] = None) -> None:
        body = self._body()
        if if_match is not None and url_scheme(self.url) == "s3":
            bucket, key, _ = self.fs.split_path(self.path)
            try:
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body,
                                IfMatch=if_match)
            except OSError as exc:
                if any(w in str(exc) for w in ("pre-condition", "PreconditionFailed",
                                               "ConditionalRequestConflict")):
                    raise FileExistsError(str(exc)) from exc
                raise
        elif if_match is not None:  # no conditional replace in the client: compare first
            _, etag = self._read()
            if etag != if_match:
                raise FileExistsError(self.path)
            self.fs.pipe_file(self.path, body)
        elif create:
            # looked for first: a store that ignores the condition (an S3 clone, an
            # emulator) must still never overwrite a lock that is there
            self.fs.invalidate_cache(self.path)
            if self.fs.exists(self.path):
                raise FileExistsError(self.path)
            try:
                self.fs.pipe_file(self.path, body, mode="create")
            except TypeError:  # an fsspec client without conditional create: read back
                self.fs.pipe_file(self.path, body)
        else:
            self.fs.pipe_file(self.path, body)
        d, self.etag = self._read()
        if d is None or d.get("run") != self.run:  # the store ignored the condition
            raise FileExistsError(self.path)

    def _locked(self, d: Dict[str, Any]) -> OutputLockedError:
        age = time.time() - float(d.get("time") or 0)
        return OutputLockedError(
            f"{safe_text(self.what)} is being written by process {d.get('pid')} on "
            f"{safe_text(str(d.get('host')))} (lock {safe_text(self.url)}, renewed "
            f"{max(age, 0):.0f} s ago; taken over when not renewed for "
            f"{float(d.get('lease_s') or 0):.0f} s); wait for it to finish, or choose "
            "another --out")

    def acquire(self) -> "RemoteLock":
        for _ in range(5):
            try:
                self._put(create=True)
                break
            except FileExistsError:
                pass
            except Exception as exc:  # noqa: BLE001 - no credentials, no bucket, network
                raise _error(self.url, "taking the output lock", exc) from exc
            d, etag = self._read()
            if d is None:
                continue  # released meanwhile: try again
            if time.time() <= float(d.get("time") or 0) + float(d.get("lease_s") or 0):
                raise self._locked(d)
            try:
                self._put(if_match=etag)
            except FileExistsError:
                continue  # another run took it over first: look again
            except Exception as exc:  # noqa: BLE001
                raise _error(self.url, "taking over the output lock", exc) from exc
            log.warning("%s: took over the lock of process %s on %s, not renewed for %.0f s "
                        "(that run was killed?)", safe_text(self.url), d.get("pid"),
                        safe_text(str(d.get("host"))), time.time() - float(d.get("time") or 0))
            break
        else:
            raise OutputLockedError(f"{safe_text(self.url)}: cannot take the lock (it keeps "
                                    "changing hands)")
        self._thread = threading.Thread(target=self._beat, name="quasar-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self._put(if_match=self.etag)
            except FileExistsError:
                d, _ = self._read()
                self.lost = (f"the lock {safe_text(self.url)} was taken over by process "
                             f"{(d or {}).get('pid')} on {safe_text(str((d or {}).get('host')))}")
                log.error("%s: this run's outputs are no longer uploaded", self.lost)
                return
            except Exception as exc:  # noqa: BLE001 - a network blip: the next beat retries
                log.warning("%s: renewing the lock failed (%s); retrying", safe_text(self.url),
                            exc)

    def check(self) -> None:
        """Raise when the lock was lost (another run took it over): nothing more may be
        uploaded."""
        if self.lost:
            raise OutputLockedError(f"{self.lost}: stopping (this run's lease had expired)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.lost:
            return
        try:
            d, _ = self._read()
            if d is not None and d.get("run") == self.run:
                self.fs.rm_file(self.path)
        except Exception as exc:  # noqa: BLE001 - it expires on its own
            log.warning("%s: could not remove the lock (%s); it expires in %.0f s",
                        safe_text(self.url), exc, self.lease_s)


def acquire_all(urls_and_what: Iterable[Tuple[str, str]]) -> List[RemoteLock]:
    locks: List[RemoteLock] = []
    try:
        for url, what in urls_and_what:
            locks.append(RemoteLock(url, what).acquire())
    except BaseException:
        release_all(locks)
        raise
    return locks


def release_all(locks: Sequence[RemoteLock]) -> None:
    for lk in reversed(list(locks)):
        lk.release()


# --------------------------------------------------------------------------- mirrors
class Mirror:
    """The files of one remote output (the table or the embeddings of a local run) and
    their staging copies: ``names`` live in ``local_dir`` and at ``<remote_dir>/<name>``.

    :meth:`sync` uploads each file whose content changed since it was last uploaded (in
    ``names`` order: sidecars first, the table last) and then removes from the store the
    files this run knows there but no longer has (a Parquet journal once the Parquet file
    is up). The ETags it leaves are recorded in ``local_dir/.synced.json``, which tells
    the next ``--resume`` on this machine whether the staging copy is still the newest."""

    def __init__(self, url: str, names: Sequence[str]) -> None:
        self.url = url = normalize_url(url)
        self.remote_dir = url.rsplit("/", 1)[0]
        self.names = list(dict.fromkeys(names))
        self.local_dir = staging_dir(url)
        self.remote_etags: Dict[str, str] = {}   # what the store holds (as far as we know)
        self._sent: Dict[str, Tuple[int, int]] = {}
        # names this run may remove from the store once gone here: what it uploaded, and
        # what it continues (--resume) or replaces (--overwrite); never another run's files
        self._owned: set = set()

    def local(self, name: str) -> str:
        return str(self.local_dir / name)

    def remote(self, name: str) -> str:
        return f"{self.remote_dir}/{name}"

    def scan(self) -> Dict[str, str]:
        """ETag of each of ``names`` the store holds now."""
        found = {}
        for n in self.names:
            info = remote_info(self.remote(n))
            if info is not None:
                found[n] = _etag(info)
        return found

    def _marker(self) -> Optional[Dict[str, str]]:
        try:
            with open(self.local_dir / _MARKER, encoding="utf-8") as f:
                d = json.load(f)
            return d if isinstance(d, dict) else None
        except (OSError, ValueError):
            return None

    def _write_marker(self) -> None:
        from quasar.bundle.atomic import atomic_write_text

        atomic_write_text(self.local_dir / _MARKER, json.dumps(self.remote_etags) + "\n")

    def clear(self) -> None:
        shutil.rmtree(self.local_dir, ignore_errors=True)
        self.local_dir.mkdir(parents=True, exist_ok=True)

    def prepare(self, *, resume: bool, overwrite: bool) -> List[str]:
        """Set up the staging folder; returns the names the store already holds.
        ``--resume``: the staging copy of a killed run on this machine is kept when the
        store still holds exactly what it last uploaded (it may hold newer rows); otherwise
        the store's files are downloaded. A new run or ``--overwrite`` starts empty (an
        overwrite records no marker until its end: a killed one is never resumed)."""
        found = self.scan()
        self.remote_etags = dict(found)
        self._owned = set(found) if (resume or overwrite) else set()
        if resume and self._marker() == found:
            log.info("%s: resuming from the staging copy %s", safe_text(self.url),
                     self.local_dir)  # uploaded whole at the next checkpoint
            return list(found)
        self.clear()
        if resume:
            for n in found:
                download(self.remote(n), self.local(n))
            self._remember_local()
        if not overwrite:
            self._write_marker()
        return list(found)

    def _remember_local(self) -> None:
        for n in self.names:
            p = self.local(n)
            if os.path.exists(p):
                st = os.stat(p)
                self._sent[n] = (st.st_size, st.st_mtime_ns)

    def sync(self) -> None:
        for n in self.names:
            p = self.local(n)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self._sent.get(n) == sig and n in self.remote_etags:
                continue
            upload(p, self.remote(n))
            info = remote_info(self.remote(n))
            self.remote_etags[n] = _etag(info or {})
            self._sent[n] = sig
            self._owned.add(n)
        for n in list(self.remote_etags):
            if n in self._owned and not os.path.exists(self.local(n)):
                remove(self.remote(n))
                del self.remote_etags[n]
                self._sent.pop(n, None)
        self._write_marker()


class RemoteOutputs:
    """The remote outputs of one local run: locks, mirrors, checkpoints (see the module's
    docstring). ``local_paths`` maps each remote URL to its staging path, which the local
    writers are given instead."""

    def __init__(self, targets: Dict[str, List[str]], *, resume: bool, overwrite: bool) -> None:
        self.mirrors = {url: Mirror(url, names) for url, names in targets.items()}
        self.resume, self.overwrite = resume, overwrite
        self.locks: List[RemoteLock] = []
        self.interval = _env_seconds(_CHECKPOINT_ENV, CHECKPOINT_S)
        self._last = time.monotonic()
        self.existing: List[str] = []

    def local_path(self, url: Optional[str]) -> Optional[str]:
        if url is None or url not in self.mirrors:
            return url
        m = self.mirrors[url]
        return m.local(m.url.rsplit("/", 1)[1])

    def begin(self) -> None:
        """Take the locks (the first call to the store: no credentials, no bucket or no
        access fail here, before anything is scored) and prepare the staging folders."""
        self.locks = acquire_all((m.url + LOCK_SUFFIX, url) for url, m in self.mirrors.items())
        try:
            for url, m in self.mirrors.items():
                found = m.prepare(resume=self.resume, overwrite=self.overwrite)
                self.existing += [m.remote(n) for n in found]
        except BaseException:
            self.end()
            raise

    def maybe_checkpoint(self) -> None:
        """Called after each batch of rows: upload when the interval has passed (never for
        ``--overwrite``: the old output is replaced only by a complete one). A failed
        upload is a warning; the next checkpoint retries."""
        if self.overwrite or time.monotonic() - self._last < self.interval:
            return
        self._last = time.monotonic()
        for lk in self.locks:
            lk.check()
        for m in self.mirrors.values():
            try:
                m.sync()
            except OutputError as exc:
                log.warning("checkpoint of %s failed: %s", safe_text(m.url), exc)

    def finish(self) -> None:
        """The run completed: upload the final files, remove the journals from the store
        and the staging folders from this machine."""
        for lk in self.locks:
            lk.check()
        for m in self.mirrors.values():
            m.sync()
        for m in self.mirrors.values():
            shutil.rmtree(m.local_dir, ignore_errors=True)

    def interrupted(self) -> None:
        """The run stopped early: what was written is uploaded (best effort) so that
        ``--resume`` finds it here or on another machine; the staging folders stay."""
        if self.overwrite:
            return
        for m in self.mirrors.values():
            try:
                if not any(lk.lost for lk in self.locks):
                    m.sync()
            except Exception as exc:  # noqa: BLE001 - the first error matters more
                log.warning("last checkpoint of %s failed: %s", safe_text(m.url), exc)

    def end(self) -> None:
        release_all(self.locks)
        self.locks = []


# --------------------------------------------------------------------------- Ray parts
class RemoteStore:
    """The file operations of a Ray output directory on a store, for runtime/ray/parts.py
    (which uses the same interface on local folders)."""

    remote = True

    def join(self, d: str, name: str) -> str:
        return d.rstrip("/") + "/" + name

    def listdir(self, d: str) -> List[str]:
        fs, path = filesystem(d)
        try:
            fs.invalidate_cache(path)
            return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001
            raise _error(d, "listing", exc) from exc

    def exists(self, p: str) -> bool:
        return remote_info(p) is not None

    def size(self, p: str) -> int:
        info = remote_info(p)
        if info is None:
            raise FileNotFoundError(p)
        return int(info.get("size") or 0)

    def open(self, p: str, mode: str = "rb"):
        fs, path = filesystem(p)
        return fs.open(path, mode)

    def remove(self, p: str) -> None:
        remove(p)

    def makedirs(self, d: str) -> None:
        pass  # a store has no folders


class RayRemoteOutput:
    """A Ray run's ``--out`` (and ``--save-embeddings``) directory on a store: each part is
    written in a staging folder (runtime/ray/parts.write_part, unchanged) and put whole,
    its embeddings first and the part file - whose presence means "done" - last. Either
    directory may be local (then written there directly)."""

    def __init__(self, out_dir: str, emb_dir: Optional[str],
                 locks: Sequence[RemoteLock] = ()) -> None:
        self.out_dir, self.emb_dir = out_dir, emb_dir
        self.stage = staging_dir(out_dir if is_url(out_dir) else str(emb_dir))
        self.local_out = str(self.stage / "parts") if is_url(out_dir) else out_dir
        self.local_emb = (str(self.stage / "embeddings") if emb_dir is not None
                          and is_url(emb_dir) else emb_dir)
        self.locks = list(locks)

    def begin(self) -> None:
        """A fresh staging folder (what a killed run left there is redone anyway: only
        parts on the store count)."""
        shutil.rmtree(self.stage, ignore_errors=True)
        for d in (self.local_out, self.local_emb):
            if d is not None:
                os.makedirs(d, exist_ok=True)

    def write(self, part, rows, anchors, identity, dim: int) -> None:
        from .ray.parts import _embedding_files, write_part

        write_part(self.local_out, part, rows, anchors, identity, self.local_emb, dim)
        files: List[Tuple[str, str]] = []
        if self.emb_dir is not None and is_url(self.emb_dir):
            files += list(zip(_embedding_files(self.local_emb, part),
                              _embedding_files(self.emb_dir.rstrip("/"), part, RemoteStore())))
        if is_url(self.out_dir):
            files.append((os.path.join(self.local_out, part.file),
                          self.out_dir.rstrip("/") + "/" + part.file))
        for lk in self.locks:
            lk.check()
        for local, url in files:
            upload(local, url)
            os.remove(local)

    def end(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
