"""The server's one declared configuration (as Triton's model config or LitServe's
``LitAPI`` settings): read by the batcher, the admission check, the request parser and
``GET /v1/model``; validated once, so nothing downstream re-checks a value."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

#: The default cap of a request body: 32 MiB (a few dozen photos, base64 included).
DEFAULT_MAX_BODY_MB = 32.0


@dataclass(frozen=True)
class ServeConfig:
    """How ``quasar serve`` batches, admits and bounds work.

    Args:
        max_batch_size: images per inference batch (the batcher closes a batch when full).
        max_batch_wait_ms: how long the first image of a batch waits for others (Triton's
            ``max_queue_delay``, LitServe's ``batch_timeout``); 0 = run what is there.
        workers: image decoding threads.
        max_queue: images admitted at once (decoding, waiting or in a batch); a request
            that would exceed it is answered 429 with Retry-After.
        timeout_s: a request's deadline; past it the answer is 504 (its images still queued
            are dropped from their batches).
        max_body_mb: cap of a request body (413 beyond it).
        max_images: images per request (413 beyond it).
        warmup: run a warm-up batch before ``/ready`` answers 200.
    """

    max_batch_size: int = 16
    max_batch_wait_ms: float = 5.0
    workers: int = 2
    max_queue: int = 256
    timeout_s: float = 30.0
    max_body_mb: float = DEFAULT_MAX_BODY_MB
    max_images: int = 64
    warmup: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "workers", "max_queue", "max_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, "
                                 f"got {v!r}")
        for name, low in (("max_batch_wait_ms", 0.0), ("timeout_s", 1e-3),
                          ("max_body_mb", 1e-3)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= low \
                    or v != v or v == float("inf"):
                raise ValueError(f"--{name.replace('_s', '').replace('_', '-')} must be a "
                                 f"finite number >= {low:g}, got {v!r}")
        if self.max_images > self.max_queue:
            raise ValueError(f"--max-images ({self.max_images}) cannot exceed --max-queue "
                             f"({self.max_queue}): such a request could never be admitted")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    @property
    def max_wait_s(self) -> float:
        return self.max_batch_wait_ms / 1000.0

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)
