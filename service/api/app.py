"""The FastAPI application: `create_app()` for tests and servers, `app` for ASGI runners."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.routes import faces, gallery, operations
from service.api.routes.docs import OPENAPI_URL, is_docs, mount_docs
from service.api.routes.operations import package_version
from service.api.routes.ui import is_ui, mount_ui
from service.api.runtime import Runtime, start_runtime, stop_runtime
from service.api.schemas import ErrorResponse
from service.api.security import API_KEY_HEADER
from service.api.settings import Settings, get_settings
from service.vision.errors import FaceMarginError, ImageTooLarge

log = logging.getLogger("facemargin")
# Our own access log replaces uvicorn's: it leaves out the query string, where a client may
# put a credential by mistake, and carries the request id that ties a line to a response.
access_log = logging.getLogger("facemargin.access")
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ERROR_RESPONSES = {
    status: {"model": ErrorResponse}
    for status in (400, 401, 404, 409, 413, 415, 422, 429, 500, 503)
}


def _request_id(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def error_response(
    scope: Scope,
    status: int,
    code: str,
    message: str,
    details: dict | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    request_id = _request_id(scope)
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    headers = dict(headers or {})
    if request_id:
        headers["X-Request-ID"] = request_id
    return JSONResponse(
        status_code=status, content=body | {"request_id": request_id}, headers=headers
    )


def _allowed_methods(app: FastAPI, scope: Scope) -> str:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


class RequestContext:
    """Outermost layer: a request id (the client's X-Request-ID when sane, else a fresh one)
    on the scope and the response, and per-route counts and latency for /metrics."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d %.1f ms id=%s',
                client[0],
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                request_id,
            )
            runtime = getattr(self.fastapi_app.state, "runtime", None)
            if runtime is not None:
                route = scope.get("route")
                name = getattr(route, "path", "unmatched")
                runtime.metrics.requests.labels(name, scope["method"], str(status)).inc()
                runtime.metrics.latency.labels(name).observe(elapsed)


class BodyTooSlow(FaceMarginError):
    code = "request_timeout"
    http_status = 408


class BodyLimits:
    """Refuse bodies over the size cap (413) and bodies that arrive too slowly (408), before
    or while the app reads them.

    Size: Content-Length is checked up front and bytes are counted as they stream, so a chunked
    upload that omits its length is cut off too. Time: the whole body must arrive within
    `grace_s` plus its declared length at `min_rate` bytes a second, so a client trickling a
    few bytes a second is cut off instead of holding its socket and buffers for ever, while
    a large photo on a slow link still gets the time it needs. FastAPI turns any exception
    raised while it parses a form into its own 400, so when a limit trips we replace whatever
    response follows with the refusal; the server then closes the connection, whose body was
    never read to its end.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, grace_s: float, min_rate: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.grace_s = grace_s
        self.min_rate = min_rate

    def too_large(self) -> ImageTooLarge:
        return ImageTooLarge(
            f"request body is over {self.max_bytes} bytes", {"max_bytes": self.max_bytes}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        length = int(declared) if declared is not None and declared.isdigit() else 0
        if length > self.max_bytes:
            await _refusal(scope, self.too_large())(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s + length / self.min_rate
        received = 0
        complete = False
        tripped: FaceMarginError | None = None
        started = False

        async def limited() -> Message:
            nonlocal received, tripped, complete
            if complete:  # after the body: waiting for a disconnect has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                tripped = BodyTooSlow(
                    f"the request body did not arrive in time ({received:,} of "
                    f"{length:,} bytes after {self.grace_s + length / self.min_rate:.0f} s)",
                    {"received_bytes": received, "declared_bytes": length},
                )
                raise tripped from None
            received += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body")
            if received > self.max_bytes:
                tripped = self.too_large()
                raise tripped
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if tripped is None:
                started = started or message["type"] == "http.response.start"
                await send(message)
                return
            refusal = _refusal(scope, tripped, close=True)
            if message["type"] == "http.response.start":
                started = True
                await send(
                    {
                        "type": message["type"],
                        "status": tripped.http_status,
                        "headers": refusal.raw_headers,
                    }
                )
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await send({"type": message["type"], "body": refusal.body})

        try:
            await self.app(scope, limited, guarded)
        except (ImageTooLarge, BodyTooSlow):
            if started or tripped is None:
                raise
            await _refusal(scope, tripped, close=True)(scope, receive, send)


def _refusal(scope: Scope, error: FaceMarginError, close: bool = False) -> JSONResponse:
    """The error's answer; `close`: the body was not read to its end, so the connection
    cannot carry another request and the server closes it."""
    headers = error.headers() | ({"Connection": "close"} if close else {})
    return error_response(
        scope, error.http_status, error.code, error.message, error.details, headers
    )


# Paths served to anyone: liveness and readiness probes, the metrics scrape.
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})


class RefuseBeforeBody:
    """Refusals decided from the request line and headers, before any body byte is read: a
    missing or wrong API key (401), a spent rate limit (429), and an upload (every POST) while
    the server is full (503).

    Refused here, a body is never read, so an unauthenticated or overloaded upload costs
    nothing, however large it says it is. The route's own checks still run (its slot is
    granted there, so a request that passes here can be refused there, never the other way
    round; a slow uploader holds no slot while it trickles)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = getattr(self.fastapi_app.state, "runtime", None)
        if scope["type"] == "http" and runtime is not None:
            refusal = self._refusal(scope, runtime)
            if refusal is not None:
                response = error_response(
                    scope,
                    refusal.http_status,
                    refusal.code,
                    refusal.message,
                    refusal.details,
                    refusal.headers(),
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, runtime: Runtime) -> FaceMarginError | None:
        path = scope["path"]
        # The web page's files hold no secret: its API calls carry the key the user typed.
        public = (
            path in OPEN_PATHS or is_ui(path) or (is_docs(path) and runtime.settings.docs_served)
        )
        if not public and runtime.keys.enabled:
            presented = None
            for name, value in scope["headers"]:
                if name == API_KEY_HEADER.lower().encode("latin-1"):
                    presented = value.decode("latin-1")
            try:
                runtime.limiter.check(runtime.keys.identify(presented))
            except FaceMarginError as error:
                return error
        if scope["method"] == "POST":
            return runtime.shed()
        return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.runtime = await start_runtime(settings)
        try:
            yield
        finally:
            await stop_runtime(app.state.runtime)

    app = FastAPI(
        title="facemargin",
        summary="Face verification and open-set identification with calibrated thresholds.",
        description="Faces are detected (YuNet by default), aligned to the served model's "
        "template and embedded by the model in /info. Thresholds come from the model's own "
        "calibration at a named false-accept rate (identify: a false-positive identification "
        "rate). Every error is one JSON envelope: "
        '`{"error": {"code", "message", "details"}, "request_id"}`.',
        version=package_version(),
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        # The pages are ours (served offline, below); with API keys on, the API's map is not
        # handed to anyone who asks (public_docs).
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_URL if settings.docs_served else None,
    )
    if settings.docs_served:
        mount_docs(app)

    @app.exception_handler(FaceMarginError)
    async def expected_error(request: Request, error: FaceMarginError) -> JSONResponse:
        return error_response(
            request.scope,
            error.http_status,
            error.code,
            error.message,
            error.details,
            error.headers(),
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        response = error_response(request.scope, error.status_code, code, str(error.detail))
        # Starlette's own headers carry meaning (Allow on a 405, as RFC 9110 requires).
        response.headers.update(error.headers or {})
        if error.status_code == 405:
            # Starlette names only the first route that matched the path; a path served by
            # several routes (GET and DELETE /subjects/{id}) must list every method.
            response.headers["Allow"] = _allowed_methods(app, request.scope)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "problem": _problem(e)}
            for e in error.errors()
        ]
        message = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
        return error_response(request.scope, 422, "invalid_request", message, {"errors": problems})

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        # Never a traceback to the client; the log keeps it, with the request id.
        log.exception("request %s failed", _request_id(request.scope))
        return error_response(
            request.scope, 500, "internal_error", "the server failed to handle this request"
        )

    app.include_router(operations.router)
    app.include_router(faces.router)
    app.include_router(gallery.router)
    mount_ui(app)
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_body_bytes,
        grace_s=settings.body_grace_s,
        min_rate=settings.min_body_bytes_per_s,
    )
    app.add_middleware(RefuseBeforeBody, fastapi_app=app)
    app.add_middleware(RequestContext, fastapi_app=app)
    return app


def _problem(error: dict) -> str:
    """Pydantic's message, except where it speaks Python to an HTTP client."""
    if "Expected UploadFile" in str(error.get("msg", "")):
        return "expected a file (a multipart part with a filename), got a text value"
    return str(error["msg"])


# For other ASGI servers (`gunicorn -k uvicorn.workers.UvicornWorker service.api.app:app`):
# building the app is cheap; models load in its lifespan.
app = create_app()
