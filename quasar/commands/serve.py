"""``quasar serve``: QUASAR scores over HTTP with dynamic batching (docs/serve.md)."""
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="serve",
    summary="Serve scores over HTTP: POST /v1/score, a page at /, /metrics, /ready.",
    description="A FastAPI server (API docs at /docs) that batches the images of concurrent "
                "requests onto one session. Bad images are error entries in a 200 answer; "
                "413 / 429 / 504 for bodies over the cap, a full queue, a missed deadline. "
                "SIGTERM drains the requests in flight, then exits 0. See docs/serve.md.",
    target="quasar.runtime.serve.server:serve",
    extra="serve",
    requires=("onnxruntime", "fastapi", "uvicorn", "prometheus_client", "multipart"),
    options=[
        opt("bundle", "bundle directory (from quasar export)", metavar="BUNDLE"),
        opt("host", "address to listen on (no authentication: keep it local or behind a "
            "proxy)", metavar="ADDR"),
        opt("port", "port to listen on (0: any free port, printed on stderr)", metavar="N",
            type=O.integer),
        O.ANCHORS,
        O.RESOLUTION,
        O.DEVICE,
        O.PRECISION,
        O.BACKEND,
        O.FAST_DECODE,
        O.THREADS,
        O.WORKERS.but(default_text=None),
        opt("max_batch_size", "images per inference batch (a batch closes when full)",
            metavar="N", type=O.integer),
        opt("max_batch_wait_ms", "how long the first image of a batch waits for others",
            metavar="MS", type=O.number),
        opt("max_queue", "images in flight at most (decoding, queued, in a batch); beyond: "
            "429 with Retry-After", metavar="N", type=O.integer),
        opt("timeout", "a request's deadline in seconds (504 past it; X-Request-Timeout may "
            "shorten it)", metavar="S", type=O.number),
        opt("max_body_mb", "cap of a request body in MiB (413 beyond)", metavar="MB",
            type=O.number),
        opt("max_images", "images per request at most (413 beyond)", metavar="N",
            type=O.integer),
        opt("max_pixels", "refuse images with more pixels (too_large; 0: no limit)",
            metavar="N", type=O.integer, default_text="89478485, as Pillow"),
        O.QUIET.but(help="log warnings only"),
    ],
    examples=["quasar serve ~/.cache/quasar/bundles/clip-rn50-nopos.openai",
              "quasar serve BUNDLE --port 8080 --max-batch-size 32 --max-batch-wait-ms 10",
              "curl -F files=@photo.jpg http://127.0.0.1:8000/v1/score"],
)
