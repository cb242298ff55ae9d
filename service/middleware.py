"""What wraps every request: the API key, CORS, the body limit, admission, metrics, and the request id and access
log."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import Admission, admission_limit
from .deadlines import RecordArrival
from .errors import BodyTooLarge, error_response
from .logs import RequestContext
from .metrics import ServiceMetrics
from .openapi import DOCS_ASSETS_URL, DOCS_PATHS
from .settings import Settings

# The web page, the API docs and the schema they read load without a key: they describe the API and ask for the
# key, which their requests to the API itself then carry.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/openapi.json", *DOCS_PATHS})
OPEN_PREFIXES = ("/static/", f"{DOCS_ASSETS_URL}/")
# Multipart framing around the image: boundaries, part headers and the small `changes` field.
MULTIPART_OVERHEAD = 64 * 1024


def max_body_bytes(settings: Settings) -> int:
    return settings.max_upload_bytes + MULTIPART_OVERHEAD


def install_middleware(app: FastAPI, settings: Settings, metrics: ServiceMetrics) -> None:
    """Innermost first (each one added wraps the ones before): auth, CORS (so that 401s carry CORS headers), the
    body limit, admission (which refuses a model request before its body is read), metrics around those so
    refusals are counted too, the request id and access log, so every log line a request causes carries its id,
    and outermost X-Model-Version, so that refusals carry it too."""
    if settings.api_key is not None:
        _require_api_key(app, settings.api_key.get_secret_value())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
        )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes(settings))
    app.add_middleware(
        Admission,
        limit=admission_limit(settings.max_queue, settings.max_batch_size),
        batch_size=settings.max_batch_size,
        setting_ms=settings.request_timeout_ms,
        on_refused=metrics.observe_refusal,
    )
    app.add_middleware(
        RequestContext,
        on_response=lambda scope, status, seconds: metrics.observe_request(
            endpoint_label(app, scope), scope["method"], status, seconds
        ),
    )
    app.add_middleware(ModelVersionHeader)
    app.add_middleware(RecordArrival)  # outermost: a request's deadline counts from its arrival


def _require_api_key(app: FastAPI, key: str) -> None:
    # Digests of equal length, so compare_digest's time reveals neither how much of a guess was right nor the
    # key's length.
    expected = hashlib.sha256(key.encode()).digest()

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or request.method == "OPTIONS":
            return await call_next(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        offered = hashlib.sha256(token.strip().encode()).digest()
        if not hmac.compare_digest(offered, expected) or scheme.lower() != "bearer":
            return error_response(
                401,
                "unauthorized",
                "a valid API key is required as 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)


def endpoint_label(app: FastAPI, scope: Scope) -> str:
    """The route template a request matches, for bounded metric labels: a mount's files (the page's /static, the
    docs' /static-docs) share their mount's path, unknown paths one label. Matched here rather than read from the
    routed scope, so that requests refused before routing (401, 413) count too."""
    # Routing into a mount moved root_path onto the mount's path; match from the app's own root again.
    original = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    for route in _flat(app.router.routes):
        if route.matches(original)[0] != Match.NONE:
            return getattr(route, "path", "unmatched")
    return "unmatched"


def _flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    # FastAPI keeps an included router as one entry, its routes behind `original_router`.
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _flat(included.routes) if included is not None else (route,)


class BodyLimit:
    """Refuses bodies over the limit as they stream in (413), before the app has read them whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            too_large = BodyTooLarge(self.max_bytes)
            await error_response(413, "payload_too_large", str(too_large.detail))(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class ModelVersionHeader:
    """X-Model-Version on every response once a model is loaded: the version of the model that answered (the one
    the request leased, service/deps.py), else of the one serving now (health checks, refusals before routing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.get("state", {})  # the lifespan's state, per request (the routes' request.state)

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start" and "slot" in state:
                version = state.get("model_version") or state["slot"].version
                message["headers"] = [*message.get("headers", ()), (b"x-model-version", version.encode())]
            await send(message)

        await self.app(scope, receive, send_with_version)
