"""``quasar serve`` on a Ray cluster: the same FastAPI app in Ray Serve replicas.

Each replica holds one Scorer (one ONNX Runtime session, CPU or GPU) and the app of
:mod:`.app` over it; inside a replica the images of concurrent requests are batched by Ray
Serve's own ``@serve.batch`` (:class:`RayServeBatcher`, the same ``run_batch`` as the local
server's batcher), and Ray Serve spreads requests over replicas and scales their number
between ``min_replicas`` and ``max_replicas`` on the requests in flight. docs/serve.md has
the recipe::

    from quasar.runtime.serve.ray_serve import quasar_app
    serve.run(quasar_app("/models/rn50", max_replicas=4, num_gpus=1, device="cuda"))

``/metrics`` of this app answers for the replica that served the request (Ray exports its
own per-deployment metrics to Prometheus); ``/ready`` and Ray Serve's health check both
wait for the replica's warm-up batch.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional

from .config import ServeConfig


class RayServeBatcher:
    """The :class:`~quasar.runtime.serve.batcher.Batcher` interface on Ray Serve's
    ``@serve.batch`` (which only runs inside a Ray Serve replica)."""

    def __init__(self, run_batch: Callable[[List[Any]], List[Any]], max_batch_size: int,
                 max_wait_s: float) -> None:
        from ray import serve

        self._executor = ThreadPoolExecutor(1, thread_name_prefix="quasar-infer")
        executor = self._executor

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=max_wait_s)
        async def batched(jobs: List[Any]) -> List[Any]:
            return await asyncio.get_running_loop().run_in_executor(executor, run_batch, jobs)

        self._batched = batched

    def __len__(self) -> int:
        return 0  # Ray Serve's queue length is its own metric (serve_batch_queue_length)

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._executor.shutdown(wait=True)

    async def submit(self, job: Any) -> Any:
        return await self._batched(job)

    async def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def quasar_app(bundle: str, *, scorer_options: Optional[Dict[str, Any]] = None,
               config: Optional[ServeConfig] = None, min_replicas: int = 1,
               max_replicas: int = 1, target_ongoing_requests: float = 8.0,
               num_cpus: float = 1.0, num_gpus: float = 0.0, device: str = "auto") -> Any:
    """A Ray Serve application: replicas of the ``quasar serve`` app over ``bundle``.

    ``scorer_options``: keyword arguments of ``Scorer.from_bundle`` (anchors, resolution,
    precision, backend, threads, max_pixels). ``min_replicas == max_replicas``: a fixed
    number of replicas; otherwise Ray Serve autoscales between the two, aiming at
    ``target_ongoing_requests`` per replica. ``num_gpus > 0`` puts each replica's session
    on its GPU (``device="cuda"``).
    """
    from ray import serve

    from .server import build_app, load_scorer

    cfg = config or ServeConfig()
    opts = dict(scorer_options or {})
    opts.setdefault("anchors", "text")
    opts.update(device=device, batch_size=cfg.max_batch_size)
    if min_replicas < 1 or max_replicas < min_replicas:
        raise ValueError(f"replicas: need 1 <= min_replicas <= max_replicas, got "
                         f"{min_replicas}, {max_replicas}")
    scaling: Dict[str, Any] = (
        {"num_replicas": min_replicas} if min_replicas == max_replicas else
        {"autoscaling_config": {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                "target_ongoing_requests": target_ongoing_requests}})

    @serve.deployment(name="quasar", ray_actor_options={"num_cpus": num_cpus,
                                                        "num_gpus": num_gpus},
                      max_ongoing_requests=max(cfg.max_queue, cfg.max_batch_size), **scaling)
    @serve.ingress()
    class Quasar:
        def __init__(self, bundle: str, opts: Dict[str, Any], cfg: Dict[str, Any]) -> None:
            self.scorer = load_scorer(bundle, **opts)
            self.cfg = ServeConfig(**cfg)

        def __serve_build_asgi_app__(self) -> Any:
            app = build_app(self.scorer, self.cfg, batcher=RayServeBatcher)
            self.service = app.state.service
            return app

        def check_health(self) -> None:
            service = getattr(self, "service", None)
            if service is not None and service.warmup_error:
                raise RuntimeError(f"warm-up batch failed: {service.warmup_error}")

    return Quasar.bind(str(bundle), opts, cfg.as_dict())
