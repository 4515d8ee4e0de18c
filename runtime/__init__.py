"""The lean QUASAR runtime: score images from a bundle with ONNX Runtime, numpy and Pillow.

Never imports torch. Submodules load lazily: ``from quasar.runtime import Scorer``.
"""
from __future__ import annotations

from typing import Any

from quasar import lazy_attr, lazy_names

__all__ = lazy_names(__name__)  # the table is quasar._LAZY (one for quasar and quasar.runtime)


def __getattr__(name: str) -> Any:
    return lazy_attr(__name__, name)
