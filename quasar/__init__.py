"""QUASAR: no-reference, training-free image quality and aesthetics scores
(Kastryulin et al., "QUASAR: QUality and Aesthetics Scoring with Advanced Representations",
arXiv:2403.06866).

The public API is loaded lazily so that ``import quasar`` (and ``import quasar.runtime``)
stays light and never imports torch. The distribution on PyPI is ``quasar-iqa``; the import
name is ``quasar``.
"""
from __future__ import annotations

import importlib
from typing import Any, List

__version__ = "0.1.0"

# The lazily loaded public API, one table for both packages that offer it:
# name -> (module defining it, the packages exporting it).
_Q, _RT = "quasar", "quasar.runtime"
_LAZY = {
    "Scorer": ("quasar.runtime.scorer", (_Q, _RT)),
    "ScoreResult": ("quasar.runtime.scorer", (_RT,)),
    "quasar_scores": ("quasar.runtime.scoring", (_RT,)),
    "Engine": ("quasar.runtime.engine", (_RT,)),
    "EngineConfig": ("quasar.runtime.engine", (_RT,)),
    "ImageLoader": ("quasar.runtime.images", (_RT,)),
    "open_image": ("quasar.runtime.images", (_RT,)),
    "resolve_bundle": ("quasar.runtime.default_bundle", (_RT,)),
    "Bundle": ("quasar.bundle.io", (_RT,)),
    "load_bundle": ("quasar.bundle.io", (_Q, _RT)),
    "export_bundle": ("quasar.export.bundle", (_Q,)),
    "get_model_spec": ("quasar.models.catalog", (_Q,)),
    "list_models": ("quasar.models.catalog", (_Q,)),
    "PreprocessCfg": ("quasar.models.preprocess", (_Q,)),
}


def lazy_names(package: str) -> List[str]:
    """The names ``package`` exports lazily (its ``__all__``, without ``__version__``)."""
    return sorted(n for n, (_, where) in _LAZY.items() if package in where)


def lazy_attr(package: str, name: str) -> Any:
    """``package.name`` from the table: imports the defining module on first use."""
    entry = _LAZY.get(name)
    if entry is None or package not in entry[1]:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(entry[0]), name)


__all__ = lazy_names(__name__) + ["__version__"]


def __getattr__(name: str) -> Any:
    return lazy_attr(__name__, name)
