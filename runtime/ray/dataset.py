"""The Python API on Ray Data: :func:`score_dataset` adds QUASAR scores to any Ray Dataset of
images, lazily, like any Ray Data transform."""
from __future__ import annotations

from typing import Optional, Tuple

from .actors import _DatasetScorer, resolve_spec
from .cluster import RayOptions, _actor_args, require_ray


def score_dataset(ds, bundle: Optional[str] = None, *, column: Optional[str] = None,
                  id_column: Optional[str] = None, model: Optional[str] = None,
                  anchors="text", resolution: Optional[str] = None, device: str = "auto",
                  batch_size: int = 16, threads: Optional[int] = None,
                  max_pixels: Optional[int] = None, workers: Optional[int] = None,
                  gpus_per_worker: float = 0.0, decode_cpus: float = 1.0,
                  precision: str = "fp32", backend: Optional[str] = None,
                  fast_decode: bool = False, embeddings: bool = False):
    """Add QUASAR scores to a Ray Dataset of images (lazy, like any Ray Data transform).

    Args:
        ds: a ``ray.data.Dataset`` with a column of encoded image bytes (e.g. from
            ``ray.data.read_binary_files(..., include_paths=True)`` or a Parquet/WebDataset
            read), of Hugging Face ``{"bytes", "path"}`` structs, or of image paths readable
            by the workers.
        bundle: bundle directory (None: the cached bundle of ``model``).
        column: the image column; default the first of ``bytes``, ``image``, ``jpg``,
            ``png``, ``webp``, ``path`` present.
        id_column: a column naming each row in error messages (default ``path`` when the
            images are bytes and a ``path`` column exists).
        anchors, resolution, device, batch_size, threads, max_pixels, precision, backend,
            fast_decode: as ``Scorer`` (a reduced precision must have passed its
            ``quasar optimize`` gate; ``auto`` is resolved with the driver's hardware).
        embeddings: also add an ``embedding`` column (fixed-size list of float32, null
            where the input failed).
        workers: actors (default: GPUs / gpus_per_worker, or one per node).
        gpus_per_worker: GPUs per actor (> 0 runs ONNX Runtime on CUDA).
        decode_cpus: CPUs reserved per actor for its decoding threads.

    Returns:
        The dataset with ``score_<anchor set>`` (float, null where the input failed),
        ``status`` (``ok`` or the failure kind, as ``quasar score`` writes it) and ``error``
        columns (and ``embedding``) added; the other columns are kept.

    Example:
        >>> ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)
        >>> scored = score_dataset(ds, "bundles/clip-rn50-nopos.openai")
        >>> scored.drop_columns(["bytes"]).write_parquet("s3://bucket/scores/")
    """
    ray = require_ray()
    device = "cuda" if gpus_per_worker and device == "auto" else device
    spec, _b = resolve_spec(bundle, model=model, anchors=anchors, resolution=resolution,
                            device=device, threads=threads, max_pixels=max_pixels,
                            batch_size=batch_size, precision=precision, backend=backend,
                            fast_decode=fast_decode)
    column, id_column = _columns(ds.schema().names, column, id_column)
    opts = RayOptions(workers=workers, gpus_per_worker=gpus_per_worker, decode_cpus=decode_cpus)
    return ds.map_batches(_DatasetScorer, batch_format="pyarrow", batch_size=8 * batch_size,
                          fn_constructor_kwargs={"spec": spec, "column": column,
                                                 "id_column": id_column,
                                                 "decode_threads": opts.decode_threads,
                                                 "embeddings": bool(embeddings)},
                          **_actor_args(opts, spec, ray))


def _columns(names, column: Optional[str], id_column: Optional[str]
             ) -> Tuple[str, Optional[str]]:
    """The image column (default: the first of bytes, image, jpg, png, webp, path) and the
    id column (default ``path`` beside image bytes) of a dataset with columns ``names``."""
    if column is None:
        column = next((c for c in ("bytes", "image", "jpg", "png", "webp", "path") if c in names),
                      None)
        if column is None:
            raise ValueError(f"score_dataset: no image column among {names}; pass column=...")
    elif column not in names:
        raise ValueError(f"score_dataset: no column {column!r} in the dataset (columns: {names})")
    if id_column is None and column != "path" and "path" in names:
        id_column = "path"
    if id_column is not None and id_column not in names:
        raise ValueError(f"score_dataset: no column {id_column!r} in the dataset (columns: "
                         f"{names})")
    return column, id_column
