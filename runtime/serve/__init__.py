"""``quasar serve``: QUASAR scores over HTTP, with dynamic batching onto one session.

* :mod:`.config` - :class:`ServeConfig`, the one declared object every part reads (batching,
  caps, deadlines), validated once;
* :mod:`.batcher` - dynamic batching: images of concurrent requests wait at most
  ``max_batch_wait_ms`` for a batch of at most ``max_batch_size`` (docs/serve.md says why
  this batcher and not LitServe's or Ray Serve's, with the measurements);
* :mod:`.service` - :class:`ScoringService`: admission (queue cap, 429), decoding on the
  engine's own ``decode``, batches on the engine's ``embed_decoded``, rows with the same
  ``window_rows`` as ``quasar score`` - so the numbers are those of ``quasar score``;
* :mod:`.app` - the FastAPI application (``/v1/score``, ``/v1/model``, ``/health``,
  ``/ready``, ``/metrics``, the page at ``/``);
* :mod:`.server` - ``quasar serve``'s body: uvicorn, SIGTERM drains then exits 0;
* :mod:`.ray_serve` - the same app as a Ray Serve deployment (one session per replica).

FastAPI, uvicorn and prometheus-client come with the ``serve`` extra and are imported
only here; nothing else in the runtime imports this package.
"""
