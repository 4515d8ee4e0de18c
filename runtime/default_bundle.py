"""Find the bundle to use when none is given: ``$QUASAR_HOME/bundles/<model>``.

When the cache has no bundle and the export extra (torch, open_clip) is installed, it is
exported there (this downloads the weights, so it needs a connection); otherwise the error
says exactly how to get one.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import socket
from pathlib import Path
from typing import Optional, Union

from quasar.errors import BundleError, UnknownModelError
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
    raise BundleError("no bundle exporter is installed; pip install \"quasar[export]\"")


# Where open_clip / the DINOv2 hub fetch pretrained weights from.
WEIGHT_HOSTS = {"open_clip": "huggingface.co", "dinov2": "dl.fbaipublicfiles.com"}


def weights_reachable(host: str) -> bool:
    """Cheap check (a DNS lookup, no connection) that weights could be downloaded, so an
    offline first use fails at once instead of after the hub's retries. HF_HUB_OFFLINE=1
    counts as offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return False
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def how_to_get(model_id: str, target: Path) -> str:
    return (
        f"No bundle for {model_id} in {target}. Get one in any of these ways: "
        f"(1) on a machine with internet and the export extra (pip install \"quasar[export]\"): "
        f"`quasar export {model_id}` (writes {target}; copy that directory here); "
        f"(2) from local weights: `quasar export {model_id} --checkpoint PATH` with an OpenAI "
        f"RN50.pt or open_clip checkpoint file; "
        f"(3) point at an existing bundle directory: `--bundle DIR` "
        f"(Python: Scorer.from_bundle(\"DIR\"))."
    )


def resolve_bundle(path: Union[str, Path, None] = None, *, model: Optional[str] = None) -> Path:
    """The bundle directory to load: ``path`` if given, else the cached bundle of ``model``
    (default ``clip-rn50-nopos.openai``), exported on the fly when possible."""
    if path is not None:
        return Path(path).expanduser()
    try:
        model_id = get_model_spec(model or DEFAULT_MODEL).id
    except UnknownModelError:
        raise
    target = bundle_cache_dir(model_id)
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
