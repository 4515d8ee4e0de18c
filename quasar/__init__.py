"""QUASAR: no-reference, training-free image quality and aesthetics scores
(Kastryulin et al., "QUASAR: QUality and Aesthetics Scoring with Advanced Representations",
arXiv:2403.06866).

The public API is loaded lazily so that ``import quasar`` (and ``import quasar.runtime``)
stays light and never imports torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Scorer": ("quasar.runtime.scorer", "Scorer"),
    "load_bundle": ("quasar.bundle.io", "load_bundle"),
    "export_bundle": ("quasar.export.bundle", "export_bundle"),
    "get_model_spec": ("quasar.models.catalog", "get_model_spec"),
    "list_models": ("quasar.models.catalog", "list_models"),
    "PreprocessCfg": ("quasar.models.preprocess", "PreprocessCfg"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'quasar' has no attribute {name!r}")
