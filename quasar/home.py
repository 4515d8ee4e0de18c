"""Where QUASAR keeps its files: ``$QUASAR_HOME`` (default ``~/.cache/quasar``)."""
from __future__ import annotations

import os
from pathlib import Path


def quasar_home() -> Path:
    """Root of QUASAR's cache (bundles, fetched bundles, embeddings)."""
    return Path(os.environ.get("QUASAR_HOME") or Path.home() / ".cache" / "quasar").expanduser()


def bundle_cache_dir(model_id: str) -> Path:
    """Directory where the bundle of ``model_id`` lives in the cache."""
    return quasar_home() / "bundles" / model_id


def remote_cache_dir() -> Path:
    """Bundles fetched by URL (hf://, s3://, gs://, https://): one entry per URL, one
    verified copy per revision (see quasar/bundle/remote.py)."""
    return quasar_home() / "remote"


def embeddings_cache_dir() -> Path:
    """Directory for cached dataset embeddings (evaluate)."""
    return quasar_home() / "embeddings"
