"""The FastAPI application: `create_app()` for tests and servers, `app` for ASGI runners."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.detection import Detector
from service.errors import FaceMarginError, ImageTooLarge
from service.imaging import decode_image
from service.preprocess import build_detector
from service.schemas import Box, DetectedFace, DetectResponse, ErrorResponse, Health, ImageInfo
from service.settings import Settings, get_settings

# Multipart framing (boundaries, headers) on top of the image itself.
_MULTIPART_OVERHEAD = 64 * 1024

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}

ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 413, 415, 422, 500, 503)}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


class BodySizeLimit:
    """Refuse bodies over the cap with 413 before the app reads them.

    Checks Content-Length up front and counts bytes as they stream, so a chunked upload that
    omits its length is cut off too. FastAPI turns any exception raised while it parses a form
    into its own 400, so when the streaming cap trips we replace whatever response follows
    with the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.refusal = _error(413, ImageTooLarge.code, f"request body is over {max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.refusal(scope, receive, send)
            return
        received = 0
        tripped = False
        started = False

        async def counted() -> Message:
            nonlocal received, tripped
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                tripped = True
                raise ImageTooLarge(f"request body is over {self.max_bytes} bytes")
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if not tripped:
                started = started or message["type"] == "http.response.start"
                await send(message)
            elif message["type"] == "http.response.start":
                started = True
                await send(
                    {"type": message["type"], "status": 413, "headers": self.refusal.raw_headers}
                )
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await send({"type": message["type"], "body": self.refusal.body})

        try:
            await self.app(scope, counted, guarded)
        except ImageTooLarge:
            if started:
                raise
            await self.refusal(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.detector = build_detector(settings)
        yield

    app = FastAPI(
        title="facemargin",
        summary="Face verification and open-set identification with calibrated thresholds.",
        version="0.1.0",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )

    @app.exception_handler(FaceMarginError)
    async def expected_error(_: Request, error: FaceMarginError) -> JSONResponse:
        return _error(error.http_status, error.code, error.message)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _error(
            error.status_code, _HTTP_CODES.get(error.status_code, "http_error"), str(error.detail)
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        return _error(422, "invalid_request", where)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception) -> JSONResponse:
        # Never a traceback to the client; the server log keeps it.
        return _error(500, "internal_error", "the server failed to handle this request")

    @app.get("/health", response_model=Health, tags=["operations"])
    def health() -> Health:
        """The process is alive."""
        return Health(status="ok")

    @app.post("/detect", response_model=DetectResponse, tags=["faces"])
    def detect(
        image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP photo.")],
        detector: Annotated[Detector, Depends(get_detector)],
    ) -> DetectResponse:
        """Every face in the photo with its box, five landmarks and detector score."""
        decoded = decode_image(
            image.file.read(settings.max_image_bytes + 1),
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
        )
        faces = detector.detect(decoded.pixels)
        height, width = decoded.pixels.shape[:2]
        return DetectResponse(
            image=ImageInfo(
                width=width,
                height=height,
                format=decoded.format,
                exif_orientation=decoded.orientation,
            ),
            faces=[
                DetectedFace(
                    box=Box(**dict(zip(("x1", "y1", "x2", "y2"), map(float, f.box), strict=True))),
                    score=min(max(f.score, 0.0), 1.0),
                    landmarks=[(float(x), float(y)) for x, y in f.landmarks],
                )
                for f in faces
            ],
        )

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_image_bytes + _MULTIPART_OVERHEAD)
    return app


def get_detector(request: Request) -> Detector:
    return request.app.state.detector


app = create_app()
