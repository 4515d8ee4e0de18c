"""The QUASAR authors' released embedding files (GitHub release ``embeds``).

Each archive holds ``<name>.pt`` (a torch tensor [N, D] of raw image embeddings) and
``<name>.json`` ``{"results_paths": [...]}`` — paths as strings, or ``{path: score}``
one-entry dicts for scored prompt data (AVA). AADB ships its scores in a ``labels.json``
(``{path: score}``) next to the files. Reading the ``.pt`` needs torch; it is loaded with
``torch.load(..., weights_only=True)`` only (no pickled code is ever executed).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from quasar.errors import DatasetError


@dataclass(frozen=True)
class ReferenceEmbeddings:
    """Embeddings [N, D] float32, their paths, and scores when the files carry them."""

    embeddings: np.ndarray
    paths: List[str]
    scores: Optional[np.ndarray]
    source: Path

    def __len__(self) -> int:
        return len(self.paths)


def _stem_path(path) -> Path:
    p = Path(path)
    if p.suffix in (".pt", ".json"):
        p = p.with_suffix("")
    return p


def load_reference_embeddings(path) -> ReferenceEmbeddings:
    """Read ``<name>.pt`` + ``<name>.json`` (``path`` may name either, or ``<name>``)."""
    base = _stem_path(path)
    pt, js = base.with_name(base.name + ".pt"), base.with_name(base.name + ".json")
    for f in (pt, js):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing; the authors' embeddings come as a pair "
                                    f"{base.name}.pt + {base.name}.json in one folder")
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {pt} needs torch (the authors saved it with torch.save); "
                          "install the export extra: pip install 'quasar-iqa[export]'") from None
    try:
        t = torch.load(str(pt), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError, ...)
        raise DatasetError(f"{pt}: not a plain tensor file readable with weights_only=True "
                           f"({e})") from e
    if not isinstance(t, torch.Tensor) or t.ndim != 2:
        raise DatasetError(f"{pt}: expected one [N, D] tensor, got {type(t).__name__}"
                           f"{tuple(t.shape) if isinstance(t, torch.Tensor) else ''}")
    emb = t.detach().to(torch.float32).numpy()
    try:
        entries = json.loads(js.read_text())["results_paths"]
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{js}: expected a JSON object with 'results_paths' ({e})") from e
    if len(entries) != emb.shape[0]:
        raise DatasetError(f"{js} lists {len(entries)} paths but {pt} holds {emb.shape[0]} "
                           "embeddings; the pair does not belong together")
    scores: Optional[np.ndarray] = None
    if entries and isinstance(entries[0], dict):
        paths = [str(next(iter(d))) for d in entries]
        scores = np.asarray([float(next(iter(d.values()))) for d in entries], dtype=np.float64)
    else:
        paths = [str(p) for p in entries]
        labels = base.parent / "labels.json"
        if labels.is_file():  # AADB
            lab = json.loads(labels.read_text())
            missing = [p for p in paths if p not in lab]
            if missing:
                raise DatasetError(f"{labels}: no score for {len(missing)} paths, e.g. {missing[0]}")
            scores = np.asarray([float(lab[p]) for p in paths], dtype=np.float64)
    return ReferenceEmbeddings(embeddings=emb, paths=paths, scores=scores, source=base)


def _tail(p: str, k: int) -> str:
    parts = str(p).replace("\\", "/").split("/")
    return "/".join(parts[-k:])


def align(ref: ReferenceEmbeddings, paths: Sequence, max_components: int = 4) -> np.ndarray:
    """Rows of ``ref`` for each of ``paths`` (our dataset's paths), matched on the shortest
    unique trailing path components (file name, then ``folder/file``, ...): the authors'
    files hold absolute paths of their machine. Raises when a path has no unique match."""
    want = [str(p) for p in paths]
    out = np.full(len(want), -1, dtype=np.int64)
    todo = list(range(len(want)))
    for k in range(1, max_components + 1):
        index: Dict[str, List[int]] = {}
        for i, p in enumerate(ref.paths):
            index.setdefault(_tail(p, k), []).append(i)
        ambiguous = []
        for j in todo:
            cands = index.get(_tail(want[j], k), [])
            if len(cands) == 1:
                out[j] = cands[0]
            elif len(cands) > 1:
                ambiguous.append(j)
        todo = ambiguous
        if not todo:
            break
    missing = [want[j] for j in range(len(want)) if out[j] < 0]
    if missing:
        raise DatasetError(f"{ref.source}: {len(missing)} of {len(want)} dataset images have no "
                           f"unique match among the released embeddings, e.g. "
                           f"{os.path.basename(missing[0])!r}; check the dataset subset")
    return out


#: Targets whose image set, order and scores the reference takes from the released embedding
#: files alone (``embeddings/datasets.py`` ``AADB``: ``download_and_prepare_data`` -> the
#: ``.pt``, the ``.json`` paths and ``labels.json``); no images are needed on disk.
SELF_CONTAINED_TARGETS = ("AADB",)


def target_samples_from_reference(name: str, path):
    """DatasetSamples of ``name`` built from the authors' embedding files, as the reference
    does for AADB: rows in file order, scores from ``labels.json``, ``extra["embedding_rows"]``
    the identity (so no path matching is needed)."""
    from .datasets import DATASET_INFO, resolve_name
    from .datasets.base import DatasetSamples

    canonical = resolve_name(name)
    if canonical not in SELF_CONTAINED_TARGETS:
        raise DatasetError(f"{canonical}: the reference reads its image set from the dataset, "
                           f"not from the embedding files (only {list(SELF_CONTAINED_TARGETS)})")
    ref = load_reference_embeddings(path)
    if ref.scores is None:
        raise DatasetError(f"{ref.source}: no scores: {canonical} needs a labels.json "
                           "({path: score}) next to the .pt/.json pair, as in the authors' "
                           "release")
    info = DATASET_INFO[canonical]
    return DatasetSamples(
        name=canonical, subset="all", root=ref.source.parent, paths=[Path(p) for p in ref.paths],
        scores=ref.scores.copy(), higher_is_better=info.higher_is_better,
        extra={"embedding_rows": np.arange(len(ref), dtype=np.int64),
               "embeddings_file": str(ref.source)})
