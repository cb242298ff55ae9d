"""Every error answered as JSON {"error", "detail"}, never a bare 500 for bad input: the exceptions the service's
layers raise and the app's handlers for them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jmvae.model.checkpoint import CheckpointError

from .batching import DeadlineExceeded, QueueFull
from .core import InvalidInput
from .deadlines import ClientDisconnected
from .images import ImageRejected
from .metrics import ServiceMetrics
from .models import ReloadInProgress


class ServiceUnavailable(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


class BodyTooLarge(StarletteHTTPException):
    """Raised into the app by BodyLimit's receive, and answered by the app's handler. An HTTPException because
    FastAPI turns any other error raised while it reads a JSON body into a 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over {max_bytes} bytes")


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def validation_message(errors: list[Any]) -> str:
    parts = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":  # FastAPI's msg is "JSON decode error"; the reason is in ctx
            parts.append(f"body: not valid JSON ({e['ctx']['error']})")
            continue
        location = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{location}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(list(exc.errors())))

    @app.exception_handler(InvalidInput)
    async def _invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message([{"loc": exc.loc, "msg": exc.message}]))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "payload_too_large", str(exc.detail))

    @app.exception_handler(ImageRejected)
    async def _bad_image(request: Request, exc: ImageRejected) -> JSONResponse:
        return error_response(exc.status, "bad_image", exc.message)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        metrics.rejected.labels(exc.path).inc()
        return error_response(503, "overloaded", str(exc), {"Retry-After": "1"})

    @app.exception_handler(DeadlineExceeded)
    async def _late(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        metrics.deadline_exceeded.labels(exc.path).inc()
        return error_response(503, "deadline_exceeded", str(exc), {"Retry-After": "1"})

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected) -> JSONResponse:
        # Nobody reads it; the status is for the access log and metrics (nginx's "client closed request").
        return error_response(499, "client_closed_request", "the client disconnected before the answer")

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        return error_response(503, "not_ready", exc.detail, {"Retry-After": "1"})

    @app.exception_handler(ReloadInProgress)
    async def _reloading(request: Request, exc: ReloadInProgress) -> JSONResponse:
        return error_response(409, "reload_in_progress", str(exc))

    @app.exception_handler(CheckpointError)  # only a reload loads a checkpoint while serving
    async def _refused(request: Request, exc: CheckpointError) -> JSONResponse:
        return error_response(422, "checkpoint_refused", f"{exc}; the served model keeps serving")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal_error", "the server failed on this request; it has been logged")
