"""Slow clients: uvicorn's HTTP protocols with nginx's client_header_timeout and client_body_timeout.

uvicorn closes a connection that idles between requests (timeout_keep_alive), but one that sends half a request
line, or half a body, stays open for good, holding a file descriptor: a thousand of them exhaust the process. Here
a request's headers must arrive within `header_timeout` of its first byte (or of the connection, for one that
sends nothing), and its body must not pause longer than `body_timeout` between reads; otherwise the connection is
closed (with a 408 when no answer has begun). The cap on open connections is uvicorn's own limit_concurrency.
"""

from __future__ import annotations

import asyncio
import importlib.util
from functools import cache
from typing import Any, Literal

from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _Timeouts:
    """Mixed into a uvicorn HTTP protocol: both keep the request being read in `cycle` (None before the first),
    a new one once its headers are parsed, with `more_body` true until its body is in."""

    # From the protocol this is mixed into.
    cycle: Any
    flow: Any
    loop: asyncio.AbstractEventLoop
    transport: Any

    _timer: asyncio.TimerHandle | None = None
    _reading_headers = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout, self.body_timeout = _timeouts()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm(self.header_timeout, reading_headers=True)

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        idle = before is None or before.response_complete
        if idle and not self._reading_headers:  # the first bytes of a new request
            self._arm(self.header_timeout, reading_headers=True)
        super().data_received(data)  # type: ignore[misc]
        cycle = self.cycle
        if cycle is None or (cycle is before and idle):
            return  # its headers are still coming: their deadline stands
        if cycle.more_body:
            self._arm(self.body_timeout, reading_headers=False)  # a pause, not the whole body, is timed
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self, seconds: float, reading_headers: bool) -> None:
        self._disarm()
        self._reading_headers = reading_headers
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._reading_headers = None, False

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._reading_headers and self.flow.read_paused:
            # The app has not taken what came so far (flow control stopped reading): the client is not slow.
            self._arm(self.body_timeout, reading_headers=False)
            return
        if self._reading_headers:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


@cache
def _timeouts() -> tuple[float, float]:
    # Read once per process from the environment, where each worker reads all its settings (service/cli.py).
    settings = Settings()
    return settings.header_timeout_s, settings.body_timeout_s


class TimedH11Protocol(_Timeouts, H11Protocol):
    pass


def __getattr__(name: str) -> type:
    # TimedHttpToolsProtocol on first use only: importing httptools loads it, and JMVAE_HTTP_PARSER=h11 means not.
    if name != "TimedHttpToolsProtocol":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    timed = type(name, (_Timeouts, HttpToolsProtocol), {"__module__": __name__})
    globals()[name] = timed
    return timed


def protocol(parser: Literal["auto", "httptools", "h11"]) -> str:
    """uvicorn's `http` option: an import string, so that worker processes can load the class themselves."""
    httptools = parser == "httptools" or (parser == "auto" and importlib.util.find_spec("httptools") is not None)
    return f"{__name__}:{'TimedHttpToolsProtocol' if httptools else TimedH11Protocol.__name__}"
