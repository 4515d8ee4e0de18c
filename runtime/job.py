"""One ``quasar score`` request, built once and read by everything behind the command.

:class:`ScoreJob` is what the command line (or a Python caller of
:func:`quasar.runtime.cli.score`) asked for: the local engine, the Ray engine
(:mod:`quasar.runtime.ray`) and the run identity read their settings from it, so a value
such as ``precision`` travels one visible path from the option to the encoder instead of
being relayed by keyword through four functions. :class:`ScorerSpec` is the part a Ray
actor needs to build its Scorer, resolved on the driver.

Values are checked where they are declared - the options of ``quasar score``
(quasar/commands/score.py: choices from quasar/constants.py, ranges) - before a job is
built; the job itself only checks what no single option can: combinations
(``--resume`` with ``--overwrite``, ``--bundle`` with ``--model``, ...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from quasar.errors import RayRunError, UsageError

from .sources import SourceOptions


@dataclass(frozen=True)
class ScoreJob:
    """Everything one ``quasar score`` run was asked to do (see the command's options)."""

    inputs: Tuple[str, ...]
    bundle: Optional[str] = None
    model: Optional[str] = None
    anchors: str = "text"
    resolution: Optional[str] = None
    device: str = "auto"
    batch_size: int = 16
    workers: Optional[int] = None
    out: Optional[str] = None
    resume: bool = False
    force_resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    verbose: bool = False
    save_embeddings: Optional[str] = None
    max_pixels: Optional[int] = None
    threads: Optional[int] = None
    group_factor: int = 8
    precision: str = "fp32"          # as asked (``auto`` is resolved by the engine)
    backend: Optional[str] = None
    fast_decode: bool = False
    sources: SourceOptions = field(default_factory=SourceOptions)
    engine: str = "local"
    address: Optional[str] = None
    gpus_per_worker: float = 0.0
    decode_cpus: float = 1.0
    files_per_part: int = 1000
    offline: bool = False

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite exclude each other")
        if self.force_resume and not self.resume:
            raise UsageError("--force-resume goes with --resume")
        if self.bundle is not None and self.model is not None:
            raise UsageError("give --bundle or --model, not both")

    @property
    def variant_asked(self) -> bool:
        """True when the run asks for something else than the fp32 encoder on ONNX Runtime
        with Pillow decoding (the run then says which encoder it chose)."""
        return self.precision != "fp32" or bool(self.backend) or self.fast_decode

    def scorer_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :meth:`quasar.runtime.scorer.Scorer.from_bundle`."""
        kw: Dict[str, Any] = dict(bundle=self.bundle, model=self.model, device=self.device,
                                  anchors=self.anchors, resolution=self.resolution,
                                  batch_size=self.batch_size, threads=self.threads,
                                  max_pixels=self.max_pixels)
        if self.variant_asked:
            kw.update(precision=self.precision, backend=self.backend,
                      fast_decode=self.fast_decode)
        return kw

    def embeddings_dir(self) -> Optional[str]:
        """``--save-embeddings`` of a Ray run: a directory (one file pair per part)."""
        d = self.save_embeddings
        if d is None:
            return None
        if os.path.splitext(d)[1].lower() in (".npy", ".safetensors") or \
                (os.path.exists(d) and not os.path.isdir(d)):
            raise UsageError(f"--save-embeddings {d}: with --engine ray this is a directory "
                             "(one <part>.npy + <part>.paths.txt per part; it may be the --out "
                             "directory)")
        return d


@dataclass(frozen=True)
class ScorerSpec:
    """What a Ray actor needs to build its Scorer (picklable; resolved on the driver, so
    every actor runs the encoder the run identity names)."""

    bundle: str
    anchors: Tuple[str, ...]
    resolution: str
    device: str = "auto"
    threads: Optional[int] = None
    max_pixels: Optional[int] = None
    batch_size: int = 16
    precision: str = "fp32"          # resolved: fp32 | int8 | bf16 | fp16 (never auto)
    backend: str = "onnxruntime"
    variant: Optional[str] = None    # the manifest's variant key (None: the fp32 encoder)
    fast_decode: bool = False

    def build(self):
        from .scorer import Scorer

        scorer = Scorer.from_bundle(self.bundle, anchors=list(self.anchors),
                                    resolution=self.resolution, device=self.device,
                                    threads=self.threads, max_pixels=self.max_pixels,
                                    batch_size=self.batch_size, precision=self.precision,
                                    backend=self.backend, fast_decode=self.fast_decode)
        got = scorer.choice.variant
        if got != self.variant:
            import socket

            raise RayRunError(
                f"the worker on {socket.gethostname()} chose encoder {got or 'fp32'} for "
                f"--precision {self.precision}, the driver chose {self.variant or 'fp32'} "
                "(different hardware or backends): install the same backends on every node, "
                "or name a precision every node runs")
        return scorer
