"""Score on a Ray cluster: ``quasar score ... --engine ray`` and :func:`score_dataset`.

Needs the optional extra ``quasar-iqa[ray]``; nothing on the local path imports this module or
``ray``.

Pipeline (Ray Data, streaming)::

    parts (driver) -> score (actor pool: read + decode + embed + score) -> driver writes parts

* **Parts.** Every input shard (WebDataset ``.tar``, ``.parquet`` file) is one *part*; loose
  image files are cut into parts of ``files_per_part`` paths in input order. The output is a
  directory with one Parquet file per part, named after its shard
  (``shard-00007.tar`` -> ``shard-00007.parquet``; ``files-000003.parquet`` for loose files).
* **Score**: an actor pool over a dataset of part descriptions; each actor holds one
  :class:`~quasar.runtime.scorer.Scorer` (one ONNX Runtime session, CUDA with
  ``gpus_per_worker > 0``). A call brings several parts (:func:`parts_per_call`); the actor
  reads their shards itself with :mod:`quasar.runtime.sources` (the local path's readers)
  and streams all their inputs through one local engine (:func:`score_parts`: decoding in
  ``decode_cpus`` threads, batching, shape grouping, per-input failure rows with the local
  path's statuses and messages), yielding one table per part as it completes. Image bytes
  never travel through the object store, and the decode-ahead pipeline is not drained at
  every part boundary.
* **Write**: the driver collects rows per part (deduplicated by position, and a part
  already written is never written again when Ray retries a call whose actor died) and,
  once a part has all its rows, writes its embeddings (``--save-embeddings DIR``) and then
  the part to temp names renamed into place. A part is therefore either complete or absent:
  a rerun (``--resume``) skips finished parts that verify (row count, checksum, ids,
  scores: :func:`~quasar.runtime.ray.parts.verify_part`) and redoes the others whole, so every
  input appears exactly once. Each part carries the run identity in its Parquet metadata
  (key ``quasar.run``: bundle identity, model, resolution, anchor sets, precision, backend,
  variant, fast decode, quasar version, input options); a rerun with another identity is
  refused.

Modules: :mod:`.parts` (what a part is, writing it, verifying it on ``--resume``),
:mod:`.actors` (the Scorer on each actor, streaming parts through the local engine),
:mod:`.cluster` (Ray itself: connecting, the actor pool, the driver loop, the command's Ray
engine :func:`run_ray`), :mod:`.dataset` (:func:`score_dataset`). Importing this package
does not import ``ray``.
"""
from __future__ import annotations

from ..job import ScorerSpec  # noqa: F401
from .actors import (_DatasetScorer, _part_items, _PartRunner, _ScoringActor,  # noqa: F401
                     resolve_spec, run_identity, score_parts, score_streams, spec_of)
from .cluster import (_PART_DELAY_ENV, MAX_PARTS_PER_CALL, RayOptions,  # noqa: F401
                      RunReport, connect, parts_per_call, require_ray, run, run_ray)
from .dataset import score_dataset  # noqa: F401
from .parts import (PART_SUFFIX, RUN_META_KEY, TMP_SUFFIX, Part, plan_parts,  # noqa: F401
                    prepare_output, read_part_meta, read_parts, rows_digest, verify_part,
                    write_part)

__all__ = ["score_dataset", "run_ray", "run", "resolve_spec", "ScorerSpec", "RayOptions",
           "RunReport", "Part", "plan_parts", "read_parts", "read_part_meta", "score_parts",
           "score_streams", "verify_part", "require_ray", "connect"]
