"""The lean QUASAR runtime: score images from a bundle with ONNX Runtime, numpy and Pillow.

Never imports torch. Submodules load lazily: ``from quasar.runtime import Scorer``.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Scorer": ("scorer", "Scorer"),
    "ScoreResult": ("scorer", "ScoreResult"),
    "quasar_scores": ("scoring", "quasar_scores"),
    "Engine": ("engine", "Engine"),
    "EngineConfig": ("engine", "EngineConfig"),
    "ImageLoader": ("images", "ImageLoader"),
    "open_image": ("images", "open_image"),
    "resolve_bundle": ("default_bundle", "resolve_bundle"),
}

__all__ = sorted(_LAZY) + ["Bundle", "load_bundle"]


def __getattr__(name: str) -> Any:
    if name in ("Bundle", "load_bundle"):  # the bundle layer, re-exported
        return getattr(importlib.import_module("quasar.bundle.io"), name)
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
