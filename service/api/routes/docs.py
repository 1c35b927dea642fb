"""The API's interactive documentation (Swagger UI at /docs, ReDoc at /redoc), served from
the installed package.

FastAPI's own pages load their scripts and styles from a CDN, so an air-gapped deployment
gets blank pages. The assets come from the `fastapi-offline` wheel (Swagger UI 5, ReDoc;
MIT and Apache-2.0), installed like any other dependency; ReDoc's Google fonts are left out
for the same reason."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
OPENAPI_URL = "/openapi.json"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"

# The pages may load nothing from elsewhere: ReDoc's footer hard-codes a logo from its CDN,
# which this keeps from leaking a request (and stalling air-gapped) instead of patching it.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'"
)

router = APIRouter(include_in_schema=False)


def _self_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def _root(request: Request) -> str:
    # Behind a proxy that strips a prefix, the page must ask for its assets under it.
    return str(request.scope.get("root_path", ""))


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return _self_only(
        get_swagger_ui_html(
            openapi_url=f"{root}{request.app.openapi_url}",
            title=f"{request.app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        )
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return _self_only(
        get_redoc_html(
            openapi_url=f"{root}{request.app.openapi_url}",
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
    )


def is_docs(path: str) -> bool:
    """The documentation's pages, assets and the OpenAPI document (FACEMARGIN_PUBLIC_DOCS)."""
    return path in (DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL, OPENAPI_URL) or path.startswith(
        f"{ASSETS_URL}/"
    )


def mount_docs(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
