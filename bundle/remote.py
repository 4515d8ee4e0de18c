"""Bundles by URL: ``hf://ORG/REPO[@REV]``, ``s3://``, ``gs://``, ``https://`` -> a verified
local copy in the ``$QUASAR_HOME`` cache.

"Resolve, then load" (timm's ``_resolve_pretrained_source``): :func:`resolve_bundle` only
decides *which local directory* holds the bundle a URL names, fetching it first when needed;
:func:`quasar.bundle.io.load_bundle` loads it as it loads any local bundle. The runtime calls
it from the one place where bundles are opened (``runtime/default_bundle.resolve_bundle``).

The transports are the ecosystem's own clients, imported only when a URL needs them:
huggingface_hub for ``hf://`` (``HF_ENDPOINT``, ``HF_TOKEN``, proxies as that library reads
them) and fsspec for the rest (s3fs: ``AWS_*`` settings and ``AWS_ENDPOINT_URL`` for MinIO /
Ceph; gcsfs: Google's application-default credentials; plain HTTP(S)).

Cache layout, one *entry* per URL (``$QUASAR_HOME/remote/<scheme>/<slug>-<hash>/``)::

    <rev>/bundle/...      the verified bundle (what load_bundle opens)
    <rev>/source.json     {"url" (without revision), "revision", "requested", "fetched_at"}
                          (Bundle.source; hf://ORG/REPO@<revision> names it exactly)
    refs/<requested>      the content revision the request last resolved to (for offline use)

``<rev>`` is the Hub's commit hash for ``hf://``; for object stores, which have no commits,
the sha256 of the remote ``bundle.json`` (which pins the sha256 of every other file, so it
names the content exactly). Why it is safe:

* **atomic**: files are downloaded into a temporary sibling of ``<rev>``, the bundle is
  verified there (``load_bundle(verify=True)``: every sha256, no unlisted or escaping file),
  and only then renamed into place; a partial or refused download is never used and is
  removed (a killed fetch leaves a temporary that the next fetch sweeps);
* **names checked before any byte is fetched**: a ``bundle.json`` listing ``../x`` or an
  absolute path is refused before it could make a client write outside the cache;
* **two processes**: the fetch of one ``<rev>`` runs under :class:`~quasar.bundle.lock.
  OutputLock`; a second process waits for the first and then uses its copy;
* **offline** (``QUASAR_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or ``offline=True``): no network
  call at all; the copy the request last resolved to is used, or a clear error names the
  cache entry that is missing.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, Optional
from urllib.parse import quote

from quasar.access import denied_message, failed_message, is_auth_error
from quasar.constants import BUNDLE_JSON
from quasar.errors import (BundleError, MissingDependencyError, OutputLockedError,
                           RemoteBundleError, install_hint)
from quasar.home import remote_cache_dir
from quasar.text import safe_text

from .atomic import atomic_dir, atomic_write_text, pid_alive, remove_path, temp_siblings
from .lock import OutputLock

log = logging.getLogger(__name__)

SCHEMES = ("hf", "s3", "gs", "gcs", "http", "https")
EXTRA_OF_SCHEME = {"hf": "hub", "s3": "s3", "gs": "gcs", "gcs": "gcs", "http": "remote",
                   "https": "remote"}
SOURCE_JSON = "source.json"
LOCK_WAIT_S = 3600.0  # how long a second process waits for the first one's download
ATTEMPTS = 3  # fetches of a bundle that keeps being replaced while it downloads
MAX_MANIFEST_BYTES = 1 << 20
_HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_TRUE = ("1", "true", "yes", "on")


def is_remote(spec: Any) -> bool:
    """Whether ``spec`` is a bundle URL (``scheme://...`` of a supported scheme)."""
    return isinstance(spec, str) and "://" in spec and spec.split("://", 1)[0].lower() in SCHEMES


def offline_mode(offline: Optional[bool] = None) -> bool:
    """``offline`` when given, else ``QUASAR_OFFLINE`` / ``HF_HUB_OFFLINE`` (read at each call,
    not at import, so a test or a wrapper script can set them late)."""
    if offline is not None:
        return bool(offline)
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("QUASAR_OFFLINE", "HF_HUB_OFFLINE"))


@dataclass(frozen=True)
class BundleURL:
    """A parsed bundle URL. ``location``: the Hub repo id, or the folder URL (no trailing /);
    ``revision``: the requested Hub revision (None: ``main``)."""

    url: str
    scheme: str
    location: str
    revision: Optional[str] = None

    @property
    def requested(self) -> str:
        return self.revision or ("main" if self.scheme == "hf" else "latest")

    @property
    def canonical(self) -> str:
        """The URL without a revision (``hf://ORG/REPO``, ``s3://BUCKET/PATH``): with the
        recorded revision it names the content exactly (``hf://ORG/REPO@<commit>``)."""
        return f"hf://{self.location}" if self.scheme == "hf" else self.location

    @property
    def extra(self) -> str:
        return EXTRA_OF_SCHEME[self.scheme]


def parse_bundle_url(spec: str) -> BundleURL:
    """Split ``spec``; a malformed URL is a :class:`RemoteBundleError` saying the accepted
    forms."""
    scheme, _, rest = spec.partition("://")
    scheme = scheme.lower()
    forms = ("hf://ORG/REPO[@REVISION], s3://BUCKET/PATH, gs://BUCKET/PATH, "
             "https://HOST/PATH (the folder that holds bundle.json)")
    if scheme not in SCHEMES or not rest.strip("/"):
        raise RemoteBundleError(f"{safe_text(spec)}: not a bundle URL; use one of {forms}")
    if scheme != "hf":
        return BundleURL(spec, scheme, f"{scheme}://{rest.rstrip('/')}")
    repo, _, rev = rest.strip("/").partition("@")
    if not _HF_REPO_RE.match(repo) or (rev == "" and "@" in rest) or "/" in repo.split("/")[1]:
        raise RemoteBundleError(
            f"{safe_text(spec)}: a Hub bundle is hf://ORG/REPO or hf://ORG/REPO@REVISION "
            "(a branch, tag or commit hash; the bundle files at the repository's root)")
    return BundleURL(spec, "hf", repo, rev or None)


def entry_dir(u: BundleURL) -> Path:
    """The cache entry of a URL (the revision is not part of it: one entry, many revisions)."""
    slug = re.sub(r"[^A-Za-z0-9_.\-]+", "--", u.location.split("://")[-1]).strip("-.")[:80]
    digest = hashlib.sha256(f"{u.scheme}|{u.location}".encode()).hexdigest()[:12]
    return remote_cache_dir() / ("gs" if u.scheme == "gcs" else u.scheme) / f"{slug}-{digest}"


def _ref_path(entry: Path, requested: str) -> Path:
    return entry / "refs" / quote(requested, safe="")


def source_of(bundle_dir: Any) -> Optional[Dict[str, Any]]:
    """The source record of a bundle fetched by URL (``{"url", "revision", ...}``), read from
    its cache entry; None for any other bundle."""
    p = Path(bundle_dir)
    rec = p.parent / SOURCE_JSON
    if p.name != "bundle" or not rec.is_file():
        return None
    try:
        p.resolve().relative_to(remote_cache_dir().resolve())
        data = json.loads(rec.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------- resolving


def resolve_bundle(spec: str, *, offline: Optional[bool] = None) -> Path:
    """The local directory of the bundle at URL ``spec``: the cached, verified copy of the
    revision the URL names now (fetched, verified and cached first when missing).

    Offline: the revision the request resolved to last time, with no network call; a
    :class:`RemoteBundleError` naming the cache entry when there is none. A bundle replaced
    at its URL while it was being downloaded (a push in progress) is fetched again, at most
    :data:`ATTEMPTS` times; one that does not verify otherwise is refused."""
    u = parse_bundle_url(spec)
    entry = entry_dir(u)
    if offline_mode(offline):
        return _cached_offline(u, entry)
    for attempt in range(1, ATTEMPTS + 1):
        transport = _transport(u)
        try:
            rev = transport.revision()
        except RemoteBundleError as exc:
            return _fallback(u, entry, exc)
        target = entry / rev
        if (target / "bundle" / BUNDLE_JSON).is_file():
            break
        try:
            _fetch_locked(u, transport, target)
            break
        except RemoteBundleError:
            if attempt == ATTEMPTS or not transport.changed():
                raise
            log.warning("%s was replaced while it was being downloaded (a push in progress?); "
                        "fetching the new bundle", u.url)
    _write_ref(_ref_path(entry, u.requested), rev)
    return target / "bundle"


def _fallback(u: BundleURL, entry: Path, exc: RemoteBundleError) -> Path:
    """The server cannot be reached: the copy the request resolved to last time, with a
    warning (as huggingface_hub does), else the error."""
    if not getattr(exc, "network", False):
        raise exc
    try:
        cached = _cached_offline(u, entry)
    except RemoteBundleError:
        raise exc from None
    log.warning("%s; using the copy cached earlier (%s)", exc, cached)
    return cached


def _write_ref(ref: Path, rev: str) -> None:
    """Remember what ``requested`` resolved to (for offline use); best effort, so that a
    read-only shared cache that already holds the revision still works."""
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ref, rev + "\n")
    except OSError as exc:
        log.debug("cannot record %s -> %s (%s)", ref, rev, exc)


def _cached_offline(u: BundleURL, entry: Path) -> Path:
    ref = _ref_path(entry, u.requested)
    rev = u.revision if u.revision and (entry / u.revision).is_dir() else None
    if rev is None and ref.is_file():
        rev = ref.read_text(encoding="utf-8").strip()
    if rev and re.fullmatch(r"[A-Za-z0-9_.\-]+", rev) and \
            (entry / rev / "bundle" / BUNDLE_JSON).is_file():
        return entry / rev / "bundle"
    raise RemoteBundleError(
        f"{safe_text(u.url)}: not in the bundle cache ({safe_text(str(entry))}) and offline "
        "mode is on (QUASAR_OFFLINE / HF_HUB_OFFLINE / --offline); fetch it once with network "
        "access (unset those), or copy that cache folder from a machine that has it "
        "($QUASAR_HOME sets where the cache is)")


def _fetch_locked(u: BundleURL, transport: "_Transport", target: Path) -> None:
    """Fetch ``target`` under the entry's lock; a concurrent fetcher of the same revision is
    waited for, and its result used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = _acquire_waiting(target)
    try:
        if (target / "bundle" / BUNDLE_JSON).is_file():  # the other process finished it
            return
        for tmp, pid, _tag in temp_siblings(target, ("tmp",)):
            if not pid_alive(pid):  # left by a killed fetch
                remove_path(tmp)
        if os.path.lexists(target):  # incomplete leftover (no bundle.json): refetch
            remove_path(target)
        log.info("fetching bundle %s (revision %s) into %s", u.url, target.name, target)
        with atomic_dir(target) as work:
            stage = work / "bundle"
            stage.mkdir()
            _download_verified(u, transport, stage)
            record = {"url": u.canonical, "revision": target.name, "requested": u.requested,
                      "fetched_at": _dt.datetime.now(_dt.timezone.utc).isoformat(
                          timespec="seconds")}
            atomic_write_text(work / SOURCE_JSON, json.dumps(record, indent=1) + "\n")
    finally:
        lock.release()


def _acquire_waiting(target: Path, wait_s: float = LOCK_WAIT_S) -> OutputLock:
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return OutputLock(str(target)).acquire()
        except OutputLockedError as exc:
            if time.monotonic() > deadline:
                raise RemoteBundleError(f"{exc}; gave up waiting after {wait_s:.0f} s") from exc
            if not said:
                log.warning("another process is fetching %s; waiting for it", target)
                said = True
            time.sleep(0.2)


def _download_verified(u: BundleURL, transport: "_Transport", stage: Path) -> None:
    """Download bundle.json, check its file names, download the files, verify everything."""
    from .io import load_bundle, read_manifest

    transport.get(BUNDLE_JSON, stage)
    if (stage / BUNDLE_JSON).stat().st_size > MAX_MANIFEST_BYTES:
        raise RemoteBundleError(f"{safe_text(u.url)}: {BUNDLE_JSON} is larger than 1 MiB - "
                                "not a bundle manifest")
    manifest = _relabel(u, stage, lambda: read_manifest(stage))
    names = sorted(manifest.files)
    for name in names:
        check_remote_name(u, name)
    for name in names:
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        transport.get(name, stage)
    transport.cleanup(stage)
    _relabel(u, stage, lambda: load_bundle(stage, verify=True))


def check_remote_name(u: BundleURL, name: str) -> None:
    """A file name from a remote bundle.json must stay inside the bundle folder."""
    p = PurePosixPath(name)
    if (not name or "\\" in name or "\x00" in name or p.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))
            or p.parts[0] == ".cache"):
        raise RemoteBundleError(
            f"{safe_text(u.url)}: {BUNDLE_JSON} lists the file {safe_text(repr(name))}, which "
            "points outside the bundle (or into a reserved folder); the bundle was refused and "
            "nothing was downloaded - ask its publisher to re-export and push it again")


def _relabel(u: BundleURL, stage: Path, fn: Callable[[], Any]) -> Any:
    """Run a verification on the staged copy; its errors name the URL, not the temporary."""
    try:
        return fn()
    except BundleError as exc:
        msg = str(exc).replace(str(stage) + "/", u.url.rstrip("/") + "/")
        msg = msg.replace(str(stage), u.url)
        raise RemoteBundleError(
            f"{msg} [refused: the download from {safe_text(u.url)} did not verify - a corrupted "
            "or tampered file there, or a push in progress (run again); nothing was cached; if "
            "it persists, ask the publisher to push the bundle again]") from exc


# ----------------------------------------------------------------------- transports


class _Transport:
    """What a fetch needs from a store: the content revision, and files by name."""

    def __init__(self, u: BundleURL) -> None:
        self.u = u

    def revision(self) -> str:
        raise NotImplementedError

    def get(self, name: str, stage: Path) -> None:
        """Download the bundle file ``name`` to ``stage / name``."""
        raise NotImplementedError

    def cleanup(self, stage: Path) -> None:
        """Remove what the client left in the stage besides the bundle files."""

    def changed(self) -> bool:
        """Whether the revision the URL names is no longer the one being fetched."""
        return False


def _transport(u: BundleURL) -> _Transport:
    return _HubTransport(u) if u.scheme == "hf" else _FsspecTransport(u)


def _missing(u: BundleURL, module: str, exc: Exception) -> MissingDependencyError:
    return MissingDependencyError(
        f"{safe_text(u.url)}: {u.scheme}:// bundles need {module}, which is not installed: "
        f"{install_hint(u.extra)} (or {install_hint('remote')} for every store)")


def _network_error(u: BundleURL, what: str, exc: BaseException) -> RemoteBundleError:
    if is_auth_error(exc):
        return RemoteBundleError(denied_message(u.url, u.scheme, what, exc))
    err = RemoteBundleError(failed_message(
        u.url, what, exc, "nothing was cached - check the network (proxies: HTTPS_PROXY) and "
        "the URL, then run again"))
    err.network = True  # a cached copy may stand in (resolve_bundle)
    return err


class _HubTransport(_Transport):
    """The Hugging Face Hub through huggingface_hub (``HF_ENDPOINT`` / ``HF_TOKEN``)."""

    def __init__(self, u: BundleURL) -> None:
        super().__init__(u)
        try:
            import huggingface_hub
        except ImportError as exc:
            raise _missing(u, "huggingface_hub", exc) from exc
        self.hub = huggingface_hub
        self.endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at import
        self.commit: Optional[str] = None

    def revision(self) -> str:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        rev = self.u.revision or "main"
        try:
            info = self.hub.HfApi(endpoint=self.endpoint).model_info(self.u.location,
                                                                      revision=rev)
        except RevisionNotFoundError as exc:
            cached = _ref_path(entry_dir(self.u), self.u.requested)
            have = (f"; the cache still holds the copy it last resolved to ({cached.parent.parent})"
                    " - use it with QUASAR_OFFLINE=1 or --offline") if cached.is_file() else ""
            raise RemoteBundleError(
                f"{safe_text(self.u.url)}: revision {rev!r} does not exist (any more) in "
                f"{self.u.location}; pick an existing branch, tag or commit{have}") from exc
        except RepositoryNotFoundError as exc:
            raise RemoteBundleError(
                f"{safe_text(self.u.url)}: repository {self.u.location} not found, or private "
                "and no access: check the name, and set HF_TOKEN (or `hf auth login`) for a "
                "private repository") from exc
        except Exception as exc:  # noqa: BLE001 - network errors of the client, mapped
            raise _network_error(self.u, "reading the repository's revision", exc) from exc
        sha = getattr(info, "sha", None)
        if not sha or not re.fullmatch(r"[0-9a-f]{40}", str(sha)):
            raise RemoteBundleError(f"{safe_text(self.u.url)}: the Hub returned no commit hash "
                                    "for the revision; is HF_ENDPOINT a Hub-compatible server?")
        self.commit = str(sha)
        return self.commit

    def get(self, name: str, stage: Path) -> None:
        from huggingface_hub.errors import EntryNotFoundError

        try:
            self.hub.hf_hub_download(self.u.location, name, revision=self.commit,
                                     local_dir=str(stage), endpoint=self.endpoint)
        except EntryNotFoundError as exc:
            raise RemoteBundleError(
                f"{safe_text(self.u.url)}: {name} is listed in {BUNDLE_JSON} but missing from "
                f"commit {self.commit} of the repository (or the revision disappeared); "
                "nothing was cached - push the whole bundle again") from exc
        except Exception as exc:  # noqa: BLE001
            raise _network_error(self.u, f"downloading {name}", exc) from exc

    def cleanup(self, stage: Path) -> None:
        remove_path(stage / ".cache")  # huggingface_hub's local_dir metadata


class _FsspecTransport(_Transport):
    """s3:// gs:// http(s):// through fsspec (s3fs / gcsfs / aiohttp)."""

    def __init__(self, u: BundleURL) -> None:
        super().__init__(u)
        try:
            import fsspec
        except ImportError as exc:
            raise _missing(u, "fsspec", exc) from exc
        try:
            self.fs, self.root = fsspec.core.url_to_fs(u.location, skip_instance_cache=True)
        except ImportError as exc:
            module = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(u.scheme, "aiohttp")
            raise _missing(u, module, exc) from exc
        self.root = self.root.rstrip("/")
        self._manifest: Optional[bytes] = None

    def _rpath(self, name: str) -> str:
        return f"{self.root}/{name}"

    def revision(self) -> str:
        try:
            with self.fs.open(self._rpath(BUNDLE_JSON), "rb") as f:
                raw = f.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError as exc:
            raise RemoteBundleError(
                f"{safe_text(self.u.url)}: no {BUNDLE_JSON} there - not a QUASAR bundle folder "
                "(push one with `quasar push BUNDLE URL`)") from exc
        except Exception as exc:  # noqa: BLE001
            raise _network_error(self.u, f"reading {BUNDLE_JSON}", exc) from exc
        self._manifest = raw
        return hashlib.sha256(raw).hexdigest()[:32]

    def changed(self) -> bool:
        """bundle.json (which pins every file) is not the one the fetch started from."""
        try:
            self.fs.invalidate_cache()
            with self.fs.open(self._rpath(BUNDLE_JSON), "rb") as f:
                return f.read(MAX_MANIFEST_BYTES + 1) != self._manifest
        except Exception:  # noqa: BLE001 - gone or unreachable: report the first error
            return False

    def get(self, name: str, stage: Path) -> None:
        dest = stage / name
        if name == BUNDLE_JSON and self._manifest is not None:
            dest.write_bytes(self._manifest)  # exactly the bytes the revision names
            return
        try:
            self.fs.get_file(self._rpath(name), str(dest))
        except FileNotFoundError as exc:
            raise RemoteBundleError(
                f"{safe_text(self.u.url)}: {name} is listed in {BUNDLE_JSON} but missing "
                "there; nothing was cached - push the whole bundle again") from exc
        except Exception as exc:  # noqa: BLE001
            raise _network_error(self.u, f"downloading {name}", exc) from exc


def clear_cache(spec: str) -> Path:
    """Remove every cached revision of the URL ``spec`` (its cache entry); returns it."""
    entry = entry_dir(parse_bundle_url(spec))
    shutil.rmtree(entry, ignore_errors=True)
    return entry


__all__ = ["BundleURL", "check_remote_name", "clear_cache", "entry_dir", "is_remote",
           "offline_mode", "parse_bundle_url", "resolve_bundle", "source_of"]
