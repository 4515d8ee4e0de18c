"""Readers of the paper's datasets in their native layouts, and a registry by name.

``load_dataset("KonIQ10k", "/data/koniq")`` returns :class:`DatasetSamples` (absolute image
paths + scores) of the reference's default subset. Names are matched case-insensitively,
ignoring ``-``, ``_`` and spaces (``koniq-10k`` works).
"""
from __future__ import annotations

import difflib
import inspect
import re
from types import ModuleType
from typing import Dict, Optional, Tuple

from quasar.errors import DatasetError

from . import aadb, ava, kadid10k, kadis700k, koniq10k, liveitw, pieapp, pipal, spaq, tad66k, tid2013
from ._common import DatasetInfo
from .base import DatasetSamples

_MODULES: Tuple[ModuleType, ...] = (
    tid2013,
    koniq10k,
    kadid10k,
    liveitw,
    spaq,
    tad66k,
    aadb,
    pieapp,
    kadis700k,
    pipal,
    ava,
)
_BY_NAME: Dict[str, ModuleType] = {m.INFO.name: m for m in _MODULES}

#: Benchmarks the paper reports SRCC on (order of the paper's tables).
TARGET_DATASETS: Tuple[str, ...] = tuple(m.INFO.name for m in _MODULES if m.INFO.role == "target")
#: Image sets the paper forms anchors from.
PROMPT_DATASETS: Tuple[str, ...] = tuple(m.INFO.name for m in _MODULES if m.INFO.role == "prompt")
#: Facts per dataset: URL, subsets, default subset, score kind, expected layout.
DATASET_INFO: Dict[str, DatasetInfo] = {m.INFO.name: m.INFO for m in _MODULES}

__all__ = [
    "DATASET_INFO",
    "PROMPT_DATASETS",
    "TARGET_DATASETS",
    "DatasetInfo",
    "DatasetSamples",
    "dataset_info",
    "load_dataset",
    "resolve_name",
]


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


_KEYS = {_key(n): n for n in _BY_NAME}


def resolve_name(name: str) -> str:
    """Canonical dataset name (``koniq-10k`` -> ``KonIQ10k``); unknown names raise DatasetError."""
    canonical = _KEYS.get(_key(name))
    if canonical is None:
        close = difflib.get_close_matches(_key(name), list(_KEYS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(_KEYS[c] for c in close)}?" if close else ""
        raise DatasetError(
            f"Unknown dataset {name!r}.{hint} Known datasets: targets {list(TARGET_DATASETS)}, "
            f"prompt data {list(PROMPT_DATASETS)}."
        )
    return canonical


def dataset_info(name: str) -> DatasetInfo:
    """:class:`DatasetInfo` of a dataset by (loosely matched) name."""
    return DATASET_INFO[resolve_name(name)]


def load_dataset(name: str, root, subset: Optional[str] = None, **options) -> DatasetSamples:
    """Read dataset ``name`` from its root folder in the native layout.

    Args:
        name: dataset name as the paper writes it (case-insensitive).
        root: folder the dataset archive was extracted to.
        subset: ``None`` for the reference's default (``DATASET_INFO[name].default_subset``).
        **options: reader options, e.g. ``check_files=False`` (all readers), ``score="MOS"``
            and ``resolution="512x384"`` (KonIQ10k), ``image_dir`` (SPAQ),
            ``skip_missing`` (AVA), ``include_references`` (PieAPP).
    """
    module = _BY_NAME[resolve_name(name)]
    params = inspect.signature(module.load).parameters
    accepted = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(
            f"{module.INFO.name} reader has no option(s) {unknown}; it accepts {accepted}."
        )
    return module.load(root, subset, **options)
