"""Request deadlines: when a request arrived, the `X-Request-Timeout-Ms` header clamped to the setting, and the
absolute deadline (time.monotonic()) that the core passes down to the batchers. Also the guard that drops a
request whose client went away: uvicorn does not cancel an endpoint on disconnect, so without it a request
abandoned in a queue would still take its place in a batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

T = TypeVar("T")

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
MAX_TIMEOUT_HEADER_MS = 3_600_000  # an hour: anything larger is a mistake, answered 422 rather than clamped
TIMEOUT_HEADER_DESCRIPTION = (
    "optional: give up after this many milliseconds in the queue (answered 503 `deadline_exceeded` with "
    "Retry-After, never run); at most JMVAE_REQUEST_TIMEOUT_MS, larger values are clamped to it"
)
_ARRIVED = "jmvae_arrived"  # key in the request's scope["state"]


class ClientDisconnected(Exception):
    """The client closed the connection while its request waited: nobody reads the answer (logged as 499)."""


class RecordArrival:
    """Outermost middleware: notes when the request arrived, where its deadline starts (before its body is read)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[_ARRIVED] = time.monotonic()
        await self.app(scope, receive, send)


def arrival(scope: Scope) -> float:
    arrived: float | None = scope.get("state", {}).get(_ARRIVED)
    return arrived if arrived is not None else time.monotonic()  # an app mounted without RecordArrival


def timeout_ms(header_ms: int | None, setting_ms: float) -> float:
    """The client may ask for less than the setting, never for more."""
    return setting_ms if header_ms is None else min(float(header_ms), setting_ms)


def deadline_for(arrived: float, header_ms: int | None, setting_ms: float) -> float:
    return arrived + timeout_ms(header_ms, setting_ms) / 1000.0


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic() by which the request's model work must have started
    receive: Receive  # the request's ASGI receive, to notice a disconnect

    async def guard(self, operation: Coroutine[Any, Any, T]) -> T:
        """Runs `operation`, cancelled (so it leaves any queue) if the client disconnects first."""
        task = asyncio.ensure_future(operation)
        watcher = asyncio.ensure_future(_until_disconnected(self.receive))
        try:
            done, _ = await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            watcher.cancel()
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.wait((task,))  # until it has left its queue
        if not task.cancelled():
            task.exception()  # finished meanwhile: its answer has nobody to go to
        raise ClientDisconnected()


async def _until_disconnected(receive: Receive) -> None:
    # The body has been read: the server's next message is http.disconnect, when the client goes (or once the
    # answer is sent, by which time this watcher is cancelled).
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.01)  # never expected; keeps a server that repeats empty bodies from spinning
