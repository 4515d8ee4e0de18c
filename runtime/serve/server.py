"""The body of ``quasar serve`` (options declared in quasar/commands/serve.py).

Loads the Scorer first (a bad bundle, model, precision or device ends the command with its
error and exit 2 before any port is opened), binds the socket itself (``--port 0`` picks a
free port; the line ``quasar serve: listening on http://HOST:PORT`` on stderr names it),
then runs the app under uvicorn. SIGTERM (and Ctrl-C) stop accepting connections, let the
requests in flight finish (up to ``--timeout`` + 5 s), then exit: 0 after SIGTERM - a
drained shutdown is a normal end for a service manager - and 130 after Ctrl-C, as every
command.
"""
from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Any, Optional

from quasar.errors import EXIT_OK, UsageError

log = logging.getLogger("quasar.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(bundle: str, *, host: str = "127.0.0.1", port: int = 8000, anchors: str = "text",
          resolution: Optional[str] = None, device: str = "auto", precision: str = "fp32",
          backend: Optional[str] = None, fast_decode: bool = False,
          threads: Optional[int] = None, workers: int = 2,
          max_batch_size: int = 16, max_batch_wait_ms: float = 5.0, max_queue: int = 256,
          timeout: float = 30.0, max_body_mb: float = 32.0, max_images: int = 64,
          max_pixels: Optional[int] = None, quiet: bool = False) -> int:
    """Serve QUASAR scores over HTTP (docs/serve.md); returns the exit code."""
    from .config import ServeConfig

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="quasar serve: %(levelname)s: %(message)s", stream=sys.stderr)
    if not 0 <= int(port) <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    if max_pixels is not None and max_pixels < 0:
        raise UsageError(f"--max-pixels must be >= 0, got {max_pixels}")
    try:
        cfg = ServeConfig(max_batch_size=max_batch_size, max_batch_wait_ms=max_batch_wait_ms,
                          workers=workers, max_queue=max_queue, timeout_s=timeout,
                          max_body_mb=max_body_mb, max_images=max_images)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    scorer = load_scorer(bundle, anchors=anchors, resolution=resolution,
                         device=device, precision=precision, backend=backend,
                         fast_decode=fast_decode, threads=threads,
                         batch_size=max_batch_size, max_pixels=max_pixels)
    app = build_app(scorer, cfg)
    sock = bind(host, int(port))
    name = sock.getsockname()
    where = f"http://{'[' + name[0] + ']' if ':' in name[0] else name[0]}:{name[1]}"
    if host not in LOOPBACK:
        log.warning("listening on %s: quasar serve has no authentication; put it behind a "
                    "proxy that has, or keep it on 127.0.0.1", host)
    print(f"quasar serve: listening on {where} ({scorer.bundle.model}, {scorer.resolution}, "
          f"{scorer.precision}; page {where}/, API docs {where}/docs)", file=sys.stderr,
          flush=True)
    run_uvicorn(app, sock, cfg, quiet)
    return EXIT_OK


def load_scorer(bundle: str, **kw: Any) -> Any:
    """The one Scorer (one session) every batch runs on."""
    from ..scorer import Scorer

    anchors = kw.pop("anchors")
    return Scorer.from_bundle(str(bundle),
                              anchors=",".join(anchors) if isinstance(anchors, (list, tuple))
                              else anchors, **kw)


def build_app(scorer: Any, cfg: Any, batcher: Any = None) -> Any:
    """The FastAPI app over ``scorer`` (``batcher``: a Batcher class; default the local
    one, :mod:`.ray_serve` passes Ray Serve's)."""
    from ..integrity import run_identity
    from .app import create_app
    from .metrics import Metrics
    from .service import ScoringService

    service = ScoringService(scorer, cfg, Metrics(), batcher=batcher)
    return create_app(service, run_identity(scorer))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (IPv4 or IPv6), or a UsageError that says why not."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose "
                         "another --port (0: any free port) or --host") from None
    sock.set_inheritable(True)
    return sock


def run_uvicorn(app: Any, sock: socket.socket, cfg: Any, quiet: bool) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises a caught signal after its graceful shutdown, so that the
            # process dies of it; a drained SIGTERM is a normal end here (exit 0)
            captured = getattr(self, "_captured_signals", None)
            if sig == signal.SIGTERM and isinstance(captured, list) and sig in captured:
                captured.remove(sig)

    config = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=False,
                            timeout_graceful_shutdown=int(cfg.timeout_s) + 5, lifespan="on")
    Server(config).run(sockets=[sock])
