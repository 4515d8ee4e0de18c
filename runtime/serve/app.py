"""The FastAPI application of ``quasar serve`` (OpenAPI at ``/docs``).

Answers, and why:

* ``POST /v1/score`` - multipart files, or JSON ``{"images": [base64, ...]}``. Every image
  gets an entry, in order: its scores per anchor set, status and error (``quasar score``'s
  statuses), optionally its embedding. A bad image is an error entry in a 200 answer; the
  request fails as a whole only when the request itself is wrong: 400 (unreadable JSON or
  multipart), 415 (another content type), 422 (schema), 413 (body over ``max_body_mb``, or
  more than ``max_images`` images), 408 (the body did not arrive before the deadline),
  429 + Retry-After (queue full), 504 (deadline).
  Strings that look like URLs are refused per image: the server never fetches anything
  (server-side request forgery).
* ``GET /v1/model`` - the run identity (what decides the numbers) and the serving config.
* ``GET /health`` - the process is alive; ``GET /ready`` - 200 only after the warm-up batch.
* ``GET /metrics`` - Prometheus (:mod:`.metrics`).
* ``GET /`` - a self-contained page (drop images, see their scores) under a strict
  Content-Security-Policy: no external resource, inline code allowed by hash only.
"""

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from quasar.text import safe_text

from ..sources import Sample
from .config import ServeConfig
from .metrics import Metrics
from .service import QueueFull, ScoringService, row_json

PAGE = Path(__file__).with_name("page.html")
URL_RE = re.compile(r"^\s*[a-zA-Z][a-zA-Z0-9+.-]*://")
DATA_URL_RE = re.compile(r"^data:[^,]{0,200};base64,", re.IGNORECASE)
TIMEOUT_HEADER = "x-request-timeout"
JSON_TYPES = ("application/json",)


class RequestProblem(Exception):
    """A request that is wrong as a whole: answered with ``code`` and ``detail``."""

    def __init__(self, code: int, detail: Any, headers: Optional[Dict[str, str]] = None):
        super().__init__(str(detail))
        self.code, self.detail, self.headers = code, detail, headers or {}


# --------------------------------------------------------------------------- the page
def page_and_csp() -> Tuple[bytes, str]:
    """The page and its Content-Security-Policy: nothing may load from anywhere but this
    server's API; the inline script and style run because their sha256 is listed."""
    html = PAGE.read_text(encoding="utf-8")

    def digest(tag: str) -> str:
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert body is not None, f"page.html has no <{tag}>"
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.group(1).encode()).digest()
                                             ).decode() + "'"

    csp = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
           "img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return html.encode("utf-8"), csp


# --------------------------------------------------------------------------- parsing
def upload_sample(name: str, data: Optional[bytes], problem: str = "") -> Sample:
    """An upload as the engine's dataset sample: bytes, or a failure before decoding."""
    if problem:
        return Sample(id=name, status="decode_error", error=f"{name}: {problem}")
    return Sample(id=name, data=data)


def decode_b64(name: str, text: str) -> Sample:
    """A JSON image string -> a sample (a per-image error when it is no base64)."""
    if URL_RE.match(text):
        return upload_sample(name, None, "looks like a URL; quasar serve never fetches URLs "
                             "(server-side request forgery guard): send the image file's "
                             "bytes, base64-encoded, or upload the file (multipart)")
    m = DATA_URL_RE.match(text)
    body = "".join((text[m.end():] if m else text).split())
    try:
        return upload_sample(name, base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError) as exc:
        return upload_sample(name, None, f"not valid base64 ({exc}); encode the image file's "
                             "bytes with standard base64 (RFC 4648, with padding)")


async def read_body(request: Any, cap: int) -> bytes:
    """The body, refused (413) past ``cap`` bytes - on Content-Length before reading, and
    while reading (chunked uploads)."""
    declared = request.headers.get("content-length")
    too_big = RequestProblem(413, f"the request body is over the limit of {cap:,} bytes "
                             "(--max-body-mb); send fewer or smaller images per request")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _too_many(n: int, cfg: ServeConfig) -> RequestProblem:
    return RequestProblem(413, f"{n} images in one request, at most {cfg.max_images} "
                          "(--max-images); split the request")


def parse_json(body: bytes, cfg: ServeConfig, model: Any) -> Tuple[List[Sample], bool]:
    from pydantic import ValidationError

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # [[[[... too deep
        raise RequestProblem(400, f"the body is not valid JSON ({exc}); send "
                             '{"images": ["<base64>", ...]}') from None
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        raise RequestProblem(422, json.loads(exc.json(include_url=False,
                                                      include_input=False))) from None
    if len(req.images) > cfg.max_images:
        raise _too_many(len(req.images), cfg)
    return [decode_b64(f"images[{i}]", s) for i, s in enumerate(req.images)], req.embeddings


async def parse_multipart(request: Any, body: bytes, cfg: ServeConfig
                          ) -> Tuple[List[Sample], bool]:
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    async def replay() -> Dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=cfg.max_images + 1,
                                                         max_fields=8)
    except Exception as exc:  # starlette: HTTPException(400) or MultiPartException
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise RequestProblem(400, f"unreadable multipart body: {detail}") from None
    samples, embeddings = [], False
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            raw = await value.read()
            i = len(samples)
            name = safe_text(value.filename)[:200] if value.filename else f"files[{i}]"
            samples.append(upload_sample(name, raw))
        elif key == "embeddings":
            embeddings = _flag(value, "embeddings")
        else:
            raise RequestProblem(422, f"unknown form field {safe_text(key)!r}: send image "
                                 "files (any field name) and optionally embeddings=true")
    if len(samples) > cfg.max_images:
        raise _too_many(len(samples), cfg)
    return samples, embeddings


def _flag(value: str, name: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise RequestProblem(422, f"{name} must be true or false, got {safe_text(value)!r}")


def deadline_of(request: Any, cfg: ServeConfig) -> float:
    """Seconds this request may take: ``--timeout``, or less with ``X-Request-Timeout``."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return cfg.timeout_s
    try:
        v = float(raw)
        if not v > 0 or v == float("inf"):
            raise ValueError
    except ValueError:
        raise RequestProblem(400, f"X-Request-Timeout must be a positive number of seconds, "
                             f"got {safe_text(raw)!r}") from None
    return min(v, cfg.timeout_s)


# --------------------------------------------------------------------------- the app
def create_app(service: ScoringService, identity: Dict[str, Any]) -> Any:
    """The FastAPI app over a :class:`ScoringService` (started and stopped by the app's
    lifespan, so uvicorn and Ray Serve replicas run it alike)."""
    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(_app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="QUASAR", lifespan=lifespan, version=identity.get("quasar_version"),
                  description="No-reference image quality and aesthetics scores "
                  "(arXiv:2403.06866). docs/serve.md.")
    app.state.service = service
    app.add_middleware(_Observe, metrics=service.metrics)
    _score_route(app, service, identity)
    _other_routes(app, service, identity)
    return app


def _problem(p: RequestProblem) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": p.detail}, p.code, headers=p.headers)


def _score_request_model() -> Any:
    from pydantic import BaseModel, ConfigDict, Field

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        images: List[str] = Field(min_length=1, description="image files, base64-encoded "
                                  "(standard alphabet; a data: URL prefix is accepted)")
        embeddings: bool = Field(False, description="also return each image's embedding")

    return ScoreRequest


def _score_route(app: Any, service: ScoringService, identity: Dict[str, Any]) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    cfg, model = service.cfg, _score_request_model()

    @app.post("/v1/score", openapi_extra=_score_openapi(model))
    async def score(request: Request, embeddings: bool = False) -> Any:
        """Score images: multipart files (any field name) or JSON {"images": [base64]}."""
        t0 = time.monotonic()
        try:
            timeout = deadline_of(request, cfg)
            samples, want = await _read_in_time(_parse(request, cfg, model), timeout)
            service.admit(len(samples))
        except RequestProblem as p:
            return _problem(p)
        except QueueFull as q:
            return _problem(RequestProblem(429, str(q), {"Retry-After": str(q.retry_after)}))
        try:
            rows, emb = await asyncio.wait_for(service.score(samples, t0 + timeout),
                                               max(0.0, t0 + timeout - time.monotonic()))
        except asyncio.TimeoutError:
            return _problem(RequestProblem(504, f"the request did not finish within "
                                           f"{timeout:g} s (--timeout / X-Request-Timeout): "
                                           "the server is busy or the images are large; "
                                           "retry later or send fewer images per request"))
        finally:
            service.release(len(samples))
        want = want or embeddings
        return JSONResponse({"model": identity.get("model"), "anchors": identity.get("anchors"),
                             "results": [row_json(i, r, emb[i] if want else None)
                                         for i, r in enumerate(rows)]})


def _other_routes(app: Any, service: ScoringService, identity: Dict[str, Any]) -> None:
    from fastapi.responses import JSONResponse, Response

    page, csp = page_and_csp()

    @app.get("/v1/model")
    async def model_info() -> Dict[str, Any]:
        """The run identity (bundle sha256, model, resolution, anchor sets, precision...)."""
        return {**identity, "embed_dim": int(service.engine.dim),
                "serving": service.cfg.as_dict()}

    @app.get("/health")
    async def health() -> Dict[str, str]:
        """The process is alive (it may still be warming up: see /ready)."""
        return {"status": "alive"}

    @app.get("/ready")
    async def ready() -> Any:
        """200 once the warm-up batch has run; 503 before (or if it failed)."""
        if service.ready:
            return {"ready": True}
        why = service.warmup_error or "the warm-up batch has not finished yet"
        return JSONResponse({"ready": False, "detail": why}, 503, headers={"Retry-After": "1"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Any:
        data, ctype = service.metrics.exposition()
        return Response(data, media_type=ctype)

    @app.get("/", include_in_schema=False)
    async def index() -> Any:
        return Response(page, media_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})


async def _read_in_time(parse: Any, timeout: float) -> Tuple[List[Sample], bool]:
    """The parsed request, or 408 when its body does not arrive within the deadline (a
    client trickling its upload must not hold a connection and its memory forever)."""
    try:
        return await asyncio.wait_for(parse, timeout)
    except asyncio.TimeoutError:
        raise RequestProblem(408, f"the request body did not arrive within {timeout:g} s "
                             "(--timeout / X-Request-Timeout); send it at once") from None


async def _parse(request: Any, cfg: ServeConfig, model: Any) -> Tuple[List[Sample], bool]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES + ("multipart/form-data",):
        raise RequestProblem(415, f"content type {safe_text(ctype or 'none')!r}: send "
                             "multipart/form-data files or application/json "
                             '{"images": [base64, ...]}')
    body = await read_body(request, cfg.max_body_bytes)
    if ctype == "multipart/form-data":
        samples, want = await parse_multipart(request, body, cfg)
    else:
        samples, want = parse_json(body, cfg, model)
    if not samples:
        raise RequestProblem(422, "no images in the request")
    return samples, want


def _score_openapi(model: Any) -> Dict[str, Any]:
    """Both request bodies in the OpenAPI schema (the handler parses them itself)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "embeddings": {"type": "boolean"}}}}}}}


class _Observe:
    """Pure ASGI middleware: every HTTP answer counted by endpoint and status, timed."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, code = time.perf_counter(), [500]

        async def observe(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                code[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self.metrics.observe_request(scope.get("path", ""), code[0],
                                         time.perf_counter() - t0)
