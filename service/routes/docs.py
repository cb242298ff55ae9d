"""Interactive API docs that work offline: Swagger UI at /docs and ReDoc at /redoc. FastAPI's own pages load their
scripts from a CDN, blank without the Internet; these load them from the pinned fastapi-offline package instead,
mounted at DOCS_ASSETS_URL (openapi.py, app.py)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from ..openapi import DOCS_ASSETS_URL

# Swagger UI 5 and ReDoc 2 as fastapi-offline ships them (pyproject.toml pins it; only its files are used).
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))

router = APIRouter()


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        # Its "valid" badge would send the whole schema to an outside validator.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        with_google_fonts=False,  # the fonts come from Google; the page falls back to the system's
    )


def _root(request: Request) -> str:
    # Behind a proxy serving the service under a prefix (uvicorn --root-path), the page's URLs carry it.
    return str(request.scope.get("root_path", "")).rstrip("/")
