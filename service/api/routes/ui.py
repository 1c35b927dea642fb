"""The web page at /ui: verify, enrol, identify and manage the gallery from a browser.

Three static files in the package (service/api/ui), no build step, nothing loaded from
anywhere else: a Content-Security-Policy holds the page to this origin, so it works
air-gapped. The page holds no secret; every call it makes is a plain API request and carries
the API key the user typed (kept in the tab's sessionStorage), so the files are served
without a key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

UI_URL = "/ui"
UI_DIR = Path(__file__).resolve().parent.parent / "ui"
# blob: for the photos the page draws and the camera's stream; 'self' for everything else.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse(f"{UI_URL}/", status_code=307)


class _SelfOnly:
    """StaticFiles with the page's security headers on every answer."""

    def __init__(self, app: StaticFiles) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def is_ui(path: str) -> bool:
    return path == "/" or path == UI_URL or path.startswith(f"{UI_URL}/")


def mount_ui(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(UI_URL, _SelfOnly(StaticFiles(directory=UI_DIR, html=True)), name="ui")
