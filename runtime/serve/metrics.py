"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own (several
apps in one process - tests, Ray Serve replicas - never share or clash)."""
from __future__ import annotations

from typing import Tuple

#: Endpoints counted by name; anything else is counted as "other" (bounded label values).
ENDPOINTS = ("/v1/score", "/v1/model", "/health", "/ready", "/metrics", "/", "/docs",
             "/openapi.json")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Requests by endpoint and HTTP status, latency, batch sizes, queue depth, images by
    row status."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client import disable_created_metrics

        disable_created_metrics()  # the _created series only double the exposition

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("quasar_requests", "HTTP requests by endpoint and status code",
                                ("endpoint", "code"), registry=r)
        self.latency = Histogram("quasar_request_duration_seconds",
                                 "Time from a request's arrival to its answer",
                                 ("endpoint",), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("quasar_batch_size", "Images per inference batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("quasar_batch_duration_seconds",
                                       "Inference time of a batch", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.queue_depth = Gauge("quasar_queue_depth",
                                 "Images admitted and not answered yet (decoding, waiting "
                                 "for a batch, or in one)", registry=r)
        self.images = Counter("quasar_images", "Images answered, by row status (ok, "
                              "not_an_image, too_large, ...)", ("status",), registry=r)
        self.ready = Gauge("quasar_ready", "1 once the warm-up batch has run", registry=r)

    @staticmethod
    def endpoint(path: str) -> str:
        return path if path in ENDPOINTS else "other"

    def observe_request(self, path: str, code: int, seconds: float) -> None:
        ep = self.endpoint(path)
        self.requests.labels(ep, str(code)).inc()
        self.latency.labels(ep).observe(seconds)

    def exposition(self) -> Tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
