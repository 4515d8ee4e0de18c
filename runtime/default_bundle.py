"""Find the bundle to use when none is given, and say how to get one when there is none.

Order: ``--bundle`` (a directory, or a URL ``hf://`` ``s3://`` ``gs://`` ``https://`` fetched
into the cache by :mod:`quasar.bundle.remote`); else ``$QUASAR_DEFAULT_BUNDLE`` (for teams
that publish their own); else ``$QUASAR_HOME/bundles/<model>``. When that cache has no
bundle and the export extra (torch, open_clip) is installed, it is exported there (this
downloads the weights, so it needs a connection); otherwise the error names every way to get
one. ``python -m quasar.runtime.default_bundle`` is the torch-free check scripts/score.sh runs
before it installs an export venv (a HEAD request to the weights: offline fails in seconds).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional, Union

from quasar.errors import DISTRIBUTION as DIST, BundleError, UnknownModelError
from quasar.home import bundle_cache_dir
from quasar.models.catalog import DEFAULT_MODEL, get_model_spec
from quasar.constants import BUNDLE_JSON

log = logging.getLogger(__name__)


EXPORTERS = "quasar.exporters"  # entry-point group: (model_id, out_dir) -> bundle dir


def export_available() -> bool:
    """True when the export extra (torch + open_clip) is importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "open_clip"))


def exporter():
    """The bundle exporter, found through the ``quasar.exporters`` entry point (the runtime
    never imports ``quasar.export``: export plugs itself in)."""
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group=EXPORTERS) if hasattr(eps, "select") else eps.get(EXPORTERS, [])
    for ep in group:
        return ep.load()
    raise BundleError(f"no bundle exporter is installed; pip install \"{DIST}[export]\"")


# Where open_clip / the DINOv2 hub fetch pretrained weights from.
WEIGHT_HOSTS = {"open_clip": "huggingface.co", "dinov2": "dl.fbaipublicfiles.com"}
_OPENAI = "https://openaipublic.azureedge.net/clip/models"
# The file export downloads, per model id (open_clip's pretrained config), for the quick check
# before a 5.7 GB export install; others fall back to their family's host.
WEIGHT_URLS = {
    "clip-rn50.openai": f"{_OPENAI}/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc"
                        "04b6762/RN50.pt",
    "clip-rn50-nopos.openai": f"{_OPENAI}/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7"
                              "b63bc04b6762/RN50.pt",
    "vit-b-32.openai": f"{_OPENAI}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba9"
                       "50af/ViT-B-32.pt",
}
PROBE_TIMEOUT_S = 5.0
DEFAULT_BUNDLE_ENV = "QUASAR_DEFAULT_BUNDLE"


def weights_url(model_id: str) -> str:
    """URL of the pretrained weights export downloads for ``model_id`` (the catalogue's
    ``weights_url`` when it has one)."""
    spec = get_model_spec(model_id)
    url = getattr(spec, "weights_url", None) or WEIGHT_URLS.get(spec.id)
    if url:
        return str(url)
    if spec.family == "dinov2":
        name = spec.source_name
        return f"https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"
    return f"https://{WEIGHT_HOSTS.get(spec.family, 'huggingface.co')}/"


def probe_weights(url: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when ``url`` answers a HEAD request within ``timeout`` seconds (any HTTP status:
    the network works), else why not. Offline settings (QUASAR_OFFLINE, HF_HUB_OFFLINE) count
    as unreachable; proxies come from HTTPS_PROXY / NO_PROXY as for every download."""
    import urllib.error
    import urllib.request

    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "QUASAR_OFFLINE")):
        return "offline mode is on (HF_HUB_OFFLINE / QUASAR_OFFLINE)"
    if "://" not in url:
        url = f"https://{url}/"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered: reachable
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(reason).__name__}: {reason}"[:200]


def weights_reachable(host: str) -> bool:
    """Quick check (one HEAD request, a few seconds at most) that weights could be downloaded
    from ``host`` (a host name or a URL), so an offline first use fails at once instead of
    after the hub's retries or a 5.7 GB install."""
    return probe_weights(host) is None


def how_to_get(model_id: str, target: Path) -> str:
    """The "no bundle" message: every way to get one."""
    return (
        f"No bundle for {model_id} in {target}. Get one in any of these ways: "
        f"(1) a bundle your team published (`quasar push`): `--bundle hf://ORG/REPO` (or "
        f"s3://, gs://, https://; pip install \"{DIST}[hub]\" / [s3] / [gcs] / [remote]), or "
        f"set {DEFAULT_BUNDLE_ENV}=hf://ORG/REPO to make it the default; "
        f"(2) on a machine with internet and the export extra (pip install \"{DIST}[export]\", "
        f"or scripts/score.sh, which exports it once in a separate venv): "
        f"`quasar export {model_id}` (writes {target}; copy that directory here); "
        f"(3) from local weights: `quasar export {model_id} --checkpoint PATH` with an OpenAI "
        f"RN50.pt or open_clip checkpoint file; "
        f"(4) point at an existing bundle directory: `--bundle DIR` "
        f"(Python: Scorer.from_bundle(\"DIR\")); "
        f"(5) only to try the tools out: `quasar export {model_id} --random-init` (RANDOM "
        f"weights: its scores are MEANINGLESS)."
    )


def default_bundle_url() -> Optional[str]:
    """``$QUASAR_DEFAULT_BUNDLE`` (a URL or a directory), when set."""
    value = os.environ.get(DEFAULT_BUNDLE_ENV, "").strip()
    return value or None


def _open_path(path: Union[str, Path]) -> Path:
    from quasar.bundle.remote import is_remote, resolve_bundle as fetch

    return fetch(str(path)) if is_remote(str(path)) else Path(path).expanduser()


def resolve_bundle(path: Union[str, Path, None] = None, *, model: Optional[str] = None) -> Path:
    """The bundle directory to load: ``path`` if given (a directory, or a bundle URL fetched
    into the cache by :func:`quasar.bundle.remote.resolve_bundle`); else, without ``model``,
    ``$QUASAR_DEFAULT_BUNDLE`` when set; else the cached bundle of ``model`` (default
    ``clip-rn50-nopos.openai``), exported on the fly when possible."""
    if path is not None:
        return _open_path(path)
    if model is None and default_bundle_url():
        return _open_path(default_bundle_url())
    model_id = get_model_spec(model or DEFAULT_MODEL).id
    target = bundle_cache_dir(model_id)
    from quasar.bundle.io import recover_bundle

    recover_bundle(target)  # an edit killed between its two renames left it aside
    if (target / BUNDLE_JSON).is_file():
        return target
    if not export_available():
        raise BundleError(how_to_get(model_id, target))
    host = WEIGHT_HOSTS.get(get_model_spec(model_id).family, "huggingface.co")
    if not weights_reachable(host):
        raise BundleError(f"Cannot export {model_id} on first use: {host} is unreachable "
                          "(offline?). " + how_to_get(model_id, target))
    log.warning("no cached bundle for %s: exporting it to %s (downloads the weights)",
                model_id, target)
    try:
        return Path(exporter()(model_id, target))
    except Exception as exc:
        raise BundleError(f"exporting {model_id} failed ({type(exc).__name__}: {exc}). "
                          + how_to_get(model_id, target)) from exc


def check(model: Optional[str] = None) -> int:
    """``python -m quasar.runtime.default_bundle [MODEL]`` (scripts/score.sh, torch-free):
    0 when a bundle is at hand (cached, or ``$QUASAR_DEFAULT_BUNDLE`` set), 3 when it must be
    exported and the weights answered a HEAD request, 2 (the "no bundle" message on stderr)
    when they did not - in seconds, before any export install."""
    import sys

    if model is None and default_bundle_url():
        return 0
    try:
        model_id = get_model_spec(model or DEFAULT_MODEL).id
    except UnknownModelError as exc:
        print(f"scripts/score.sh: {exc}", file=sys.stderr)
        return 2
    target = bundle_cache_dir(model_id)
    from quasar.bundle.io import recover_bundle

    if recover_bundle(target) or (target / BUNDLE_JSON).is_file():
        return 0
    url = weights_url(model_id)
    why = probe_weights(url)
    if why is None:
        print(model_id)
        return 3
    print(f"Cannot export {model_id}: its weights ({url}) cannot be downloaded ({why}). "
          + how_to_get(model_id, target), file=sys.stderr)
    return 2


if __name__ == "__main__":
    import sys

    raise SystemExit(check(sys.argv[1] if len(sys.argv) > 1 else None))
