"""Admission: a model request that its batcher cannot hold, or could not start before its deadline, is refused
at the door, before its body is read.

The batchers' own checks (max_queue full: 503 `overloaded`; deadline passed in the queue: 503
`deadline_exceeded`) come only once a request has been routed, its body read and validated: about a millisecond
of the event loop's time each. Under several times the sustainable load those refusals alone fill the loop,
every request then waits its turn behind them, and answers take tens of seconds whatever the deadlines say
(bench/deadlines.py at 4x, docs/benchmarks.md). Here a refusal costs a few microseconds, so the loop keeps up
and the admitted requests keep their deadlines.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deadlines import MAX_TIMEOUT_HEADER_MS, TIMEOUT_HEADER, timeout_ms
from .errors import error_response

# Each model operation and the batcher path it queues on (service/engine.py).
MODEL_PATHS = {"/attributes": "image", "/edit": "image", "/generate": "attributes"}
RATE_WINDOW_S = 2.0  # answers counted for a path's current rate
_TIMEOUT_HEADER = TIMEOUT_HEADER.lower().encode()


def admission_limit(max_queue: int, max_batch_size: int) -> int:
    """Requests a path admits at once: a full queue, the batch running and the one whose answers are encoded."""
    return max_queue + 2 * max_batch_size


class _PathLoad:
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.in_flight = 0
        self.answered: deque[float] = deque()  # time.monotonic() of the answers within RATE_WINDOW_S
        self.crowded_since: float | None = None  # since when more than a batch has been in flight, without a break

    def enter(self, now: float) -> None:
        self.in_flight += 1
        if self.in_flight > self.batch_size and self.crowded_since is None:
            self.crowded_since = now

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= self.batch_size:
            self.crowded_since = None

    def expected_wait(self, now: float) -> float | None:
        """Little's law: the time a new request spends in here is those in flight over the rate they leave at.

        Only once the path has had a queue for a whole window: then the answers in it came as fast as the model
        can go, and measure its capacity. After a quiet spell they measure the quiet: a burst would be refused at a
        rate it was never limited to."""
        if self.crowded_since is None or now - self.crowded_since < RATE_WINDOW_S:
            return None
        while self.answered and self.answered[0] < now - RATE_WINDOW_S:
            self.answered.popleft()
        if not self.answered:
            return None
        return self.in_flight / (len(self.answered) / RATE_WINDOW_S)


class Admission:
    """Refuses a model request with a 503 and Retry-After when `limit` requests of its path are in flight in this
    worker (`overloaded`), or when more than a batch has been for a while and, at the rate the path answers
    meanwhile, the new one would wait past its deadline (`deadline_exceeded`: it would be refused in the queue
    anyway, after costing the loop its body). `on_refused(code, path)` counts them."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        batch_size: int,
        setting_ms: float,
        on_refused: Callable[[str, str], None],
    ) -> None:
        self.app = app
        self.limit = limit
        self.setting_ms = setting_ms
        self.on_refused = on_refused
        self.load = {path: _PathLoad(batch_size) for path in MODEL_PATHS.values()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = MODEL_PATHS.get(_route_path(scope)) if scope["type"] == "http" and scope["method"] == "POST" else None
        if path is None:
            await self.app(scope, receive, send)
            return
        load = self.load[path]
        refusal = self._refusal(load, scope)
        if refusal is not None:
            code, detail = refusal
            self.on_refused(code, path)
            await error_response(503, code, detail, {"Retry-After": "1"})(scope, receive, send)
            return

        async def send_counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                load.answered.append(time.monotonic())
            await send(message)

        load.enter(time.monotonic())
        try:
            await self.app(scope, receive, send_counting)
        finally:
            load.leave()

    def _refusal(self, load: _PathLoad, scope: Scope) -> tuple[str, str] | None:
        if load.in_flight >= self.limit:
            return "overloaded", f"{self.limit} requests of this kind are already waiting or being answered"
        wait = load.expected_wait(time.monotonic())
        timeout_s = self._timeout_s(scope)
        if wait is None or wait <= timeout_s:
            return None
        return (
            "deadline_exceeded",
            f"{load.in_flight} requests ahead take about {wait:.1f} s at the current rate, over this request's "
            f"{timeout_s * 1000:.0f} ms deadline; it was not run",
        )

    def _timeout_s(self, scope: Scope) -> float:
        # The header read as the route reads it, before routing; a bad one is left to the route, which answers 422.
        header = next((value for name, value in scope["headers"] if name == _TIMEOUT_HEADER), b"")
        valid = header.isdigit() and 1 <= int(header) <= MAX_TIMEOUT_HEADER_MS
        return timeout_ms(int(header) if valid else None, self.setting_ms) / 1000.0


def _route_path(scope: Scope) -> str:
    # Behind a proxy's prefix (uvicorn --root-path) the path carries it.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
