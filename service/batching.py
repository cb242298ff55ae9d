"""Dynamic batching: concurrent requests to one model path are merged into one forward pass."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class QueueFull(Exception):
    """The path's queue holds max_queue items (or the service is stopping): answer 503 with Retry-After."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class DeadlineExceeded(Exception):
    """The request's deadline passed before its batch started: it was never run (HTTP: 503 with Retry-After)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(eq=False)  # identity: an item is removed from the queue by `is`, never by comparing values
class _Item(Generic[In, Out]):
    value: In
    future: asyncio.Future[Out]
    enqueued: float  # time.perf_counter(), for the queue-wait metric
    deadline: float | None  # time.monotonic() by which its batch must start
    running: bool = False  # taken into a batch that is running: its answer comes with that batch
    # Wall clock (time.time_ns()), for the request's trace: when it queued, and when its batch started and ended.
    enqueued_ns: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    batch_size: int = 0

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(frozen=True)
class BatchStats:
    size: int
    queue_wait_s: list[float]
    model_s: float


class Batcher(Generic[In, Out]):
    """Collects items until max_batch_size or max_wait after the first, then runs `run` on all of them at once
    in `executor` (off the event loop). `run` maps a list of inputs to a list of outputs of the same length.

    While at least `upstream_busy` items are on their way (`upstream()`: submitters still preparing their inputs,
    such as uploads being decoded and cropped), a batch waits for them too, up to upstream_wait after its first
    item: inputs that are ready one by one would otherwise run one by one, each pass costing the model nearly what
    one of eight does. With one preparation per core, the model's wait leaves no core idle; with fewer it would,
    and the batch goes.

    An item whose deadline passes, or whose submitter is cancelled, before its batch starts leaves the queue at
    once and never reaches `run`; once its batch runs, the submitter gets that batch's answer."""

    def __init__(
        self,
        name: str,
        run: Callable[[Sequence[In]], Sequence[Out]],
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[str, BatchStats], None] | None = None,
        on_answer: Callable[[str, int, int, int, int], None] | None = None,
        upstream_wait_s: float = 0.0,
        upstream_busy: int = 1,
    ) -> None:
        self.name = name
        self._run = run
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._upstream_wait_s = upstream_wait_s
        self._upstream = 0  # items being prepared by their submitters, see upstream()
        self._upstream_busy = upstream_busy
        self._on_batch = on_batch
        # Told, in the submitter's context, of each answered item: (path, enqueued, started, finished ns, batch size).
        self._on_answer = on_answer
        # A deque rather than an asyncio.Queue: a submitter that gives up removes its own item, so the depth
        # (and max_queue) counts only items that may still run.
        self._queue: deque[_Item[In, Out]] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    @contextmanager
    def upstream(self) -> Iterator[None]:
        """Around the preparation of an input that is to be submitted next: a batch forming meanwhile waits for
        it (up to upstream_wait). Leave it just before submit(), with no await between."""
        self._upstream += 1
        try:
            yield
        finally:
            self._upstream -= 1
            self._arrived.set()  # whether it comes or failed, the forming batch looks again

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Refuses new items, fails the queued ones with QueueFull at once, and lets a running batch finish and
        answer its submitters (the model thread could not be interrupted anyway)."""
        self._stopping = True
        self._fail_queued()
        self._arrived.set()  # wakes the loop so that it sees _stopping
        if self._task is not None:
            await self._task
            self._task = None
        self._fail_queued()

    async def submit(self, value: In, deadline: float | None = None) -> Out:
        """The model's output for `value`; `deadline` (time.monotonic()) is when its batch must have started,
        else DeadlineExceeded, raised as soon as it passes."""
        if self._stopping:
            raise QueueFull(self.name, "the service is shutting down")
        if len(self._queue) >= self._max_queue:
            raise QueueFull(self.name, f"{self._max_queue} requests already waiting for the {self.name} model path")
        if deadline is not None and time.monotonic() >= deadline:
            raise self._late()
        item: _Item[In, Out] = _Item(value, asyncio.get_running_loop().create_future(), time.perf_counter(), deadline)
        item.enqueued_ns = time.time_ns()
        self._queue.append(item)
        self._arrived.set()
        try:
            timeout = None if deadline is None else deadline - time.monotonic()
            # asyncio.wait, not wait_for: a timeout must not cancel a future whose batch is already running.
            await asyncio.wait((item.future,), timeout=timeout)
            if not item.future.done() and not item.running:
                self._withdraw(item)
                raise self._late()
            output = await item.future
            if self._on_answer is not None and item.started_ns:
                self._on_answer(self.name, item.enqueued_ns, item.started_ns, item.finished_ns, item.batch_size)
            return output
        except BaseException:
            self._withdraw(item)  # cancelled (the client went away) or late: never run it
            raise

    def _late(self) -> DeadlineExceeded:
        return DeadlineExceeded(self.name, f"the request's deadline passed while it waited for the {self.name} model")

    def _withdraw(self, item: _Item[In, Out]) -> None:
        if not item.running:
            try:
                self._queue.remove(item)
            except ValueError:
                pass  # already taken into the batch being formed, which skips done futures
        if not item.future.done():
            item.future.cancel()

    def _fail_queued(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(QueueFull(self.name, "the service is shutting down"))

    async def _loop(self) -> None:
        while not self._stopping:
            batch = await self._collect()
            if self._stopping:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(QueueFull(self.name, "the service is shutting down"))
                return
            batch = self._live(batch)
            if batch:
                await self._run_batch(batch)

    async def _collect(self) -> list[_Item[In, Out]]:
        """Up to max_batch_size live items: what is queued, then what arrives within max_wait of the first, or
        within upstream_wait of it while items are on their way."""
        while not self._queue and not self._stopping:
            self._arrived.clear()
            await self._arrived.wait()
        batch: list[_Item[In, Out]] = []
        first = time.monotonic()
        until, upstream_until = first + self._max_wait_s, first + self._upstream_wait_s
        while not self._stopping:
            while self._queue and len(batch) < self._max_batch_size:
                batch.extend(self._live([self._queue.popleft()]))
            waiting_for_upstream = self._upstream >= self._upstream_busy
            remaining = (max(until, upstream_until) if waiting_for_upstream else until) - time.monotonic()
            if len(batch) >= self._max_batch_size or remaining <= 0 or not batch:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass  # one more pass takes what arrived meanwhile, then the wait is over
        return batch

    def _live(self, items: list[_Item[In, Out]]) -> list[_Item[In, Out]]:
        """Drops items whose submitter went away and fails those whose deadline passed: neither reaches `run`."""
        now = time.monotonic()
        live = []
        for item in items:
            if item.future.done():
                continue
            if item.expired(now):
                item.future.set_exception(self._late())
                continue
            live.append(item)
        return live

    async def _run_batch(self, batch: list[_Item[In, Out]]) -> None:
        loop = asyncio.get_running_loop()
        started_ns = time.time_ns()
        for item in batch:
            item.running, item.started_ns, item.batch_size = True, started_ns, len(batch)
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, [item.value for item in batch])
        except Exception:
            # Run the items one by one, so one request that makes the model raise fails alone.
            await self._run_singly(batch)
            return
        finished = time.perf_counter()
        finished_ns = time.time_ns()
        for item in batch:
            item.finished_ns = finished_ns
        for item, output in zip(batch, outputs, strict=True):
            if not item.future.done():
                item.future.set_result(output)
        if self._on_batch is not None:
            self._on_batch(
                self.name, BatchStats(len(batch), [started - item.enqueued for item in batch], finished - started)
            )

    async def _run_singly(self, batch: list[_Item[In, Out]]) -> None:
        loop = asyncio.get_running_loop()
        for item in batch:
            item.started_ns, item.batch_size = time.time_ns(), 1
            try:
                (output,) = await loop.run_in_executor(self._executor, self._run, [item.value])
                item.finished_ns = time.time_ns()
            except Exception as e:
                if not item.future.done():
                    item.future.set_exception(e)
            else:
                if not item.future.done():
                    item.future.set_result(output)
