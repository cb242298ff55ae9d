"""Structured logs: one JSON object per line (or text at a terminal), each carrying the id of the request being
served."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: ContextVar[str | None] = ContextVar("jmvae_request_id", default=None)
# The rule nginx applies (docker/nginx.conf.template): anything else is replaced, so ids cannot forge log lines.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes arrive every few seconds; their access lines stay out of INFO.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

access_logger = logging.getLogger("jmvae.service.access")
error_logger = logging.getLogger("jmvae.service")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, request_id, the record's `http` fields (access lines) and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        http = getattr(record, "http", None)
        if http is not None:
            entry["http"] = http
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")


LogFormat = Literal["auto", "json", "text"]


def resolve_log_format(format: LogFormat, stream: TextIO | None = None) -> Literal["json", "text"]:
    """auto: text for a person at a terminal, JSON for a log collector (a pipe, a file, a container's log); an
    explicit json or text wins either way. `stream` is the one the logs go to, stderr unless a test says."""
    if format != "auto":
        return format
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no stream, or a closed one: nobody is reading at a terminal
        return "json"


def log_config(level: str = "info", format: LogFormat = "auto") -> dict[str, Any]:
    """A logging.dictConfig for uvicorn's `log_config`, so every worker process logs the same way (the format is
    resolved here, once, in the process whose stderr the workers inherit).
    uvicorn's own access log is off: RequestContext writes one with the request id instead."""
    formatter = JsonFormatter if resolve_log_format(format) == "json" else TextFormatter
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "main",
        "filters": ["request_id"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"main": {"()": formatter}},
        "handlers": {"main": handler},
        "loggers": {
            "uvicorn": {"handlers": ["main"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            "jmvae": {"handlers": ["main"], "level": level.upper(), "propagate": False},
        },
    }


class RequestContext:
    """Outermost middleware: gives each request an id (the client's X-Request-ID when well formed, else a new
    one), returns it in X-Request-ID, and writes the access log line. Headers are never logged, so neither is
    the API key. `on_response(scope, status, seconds)` is told of every answer too (the request metrics), so
    one wrapper per request captures status and time for both.

    Plain ASGI rather than @app.middleware("http"), whose BaseHTTPMiddleware runs each request in a task group
    and streams the answer through a copy: a fifth of the event loop's CPU at 32 clients (py-spy under
    bench/serving.py)."""

    def __init__(self, app: ASGIApp, on_response: Callable[[Scope, int, float], None] | None = None) -> None:
        self.app = app
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if VALID_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            raise
        finally:
            seconds = time.perf_counter() - started
            if self.on_response is not None:
                self.on_response(scope, status, seconds)
            path = scope["path"]
            level = logging.DEBUG if path in QUIET_PATHS and status < 400 else logging.INFO
            client = scope.get("client")
            access_logger.log(
                level,
                "%s %s %d",
                scope["method"],
                path,
                status,
                extra={
                    "http": {
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                        "client": client[0] if client else None,
                    }
                },
            )
            REQUEST_ID.reset(token)
