"""Dynamic batching: concurrent requests to one model path are merged into one forward pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class QueueFull(Exception):
    """The path's queue holds max_queue items (or the service is stopping): answer 503 with Retry-After."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass
class _Item(Generic[In, Out]):
    value: In
    future: asyncio.Future[Out]
    enqueued: float


@dataclass(frozen=True)
class BatchStats:
    size: int
    queue_wait_s: list[float]
    model_s: float


class Batcher(Generic[In, Out]):
    """Collects items until max_batch_size or max_wait after the first, then runs `run` on all of them at once
    in `executor` (off the event loop). `run` maps a list of inputs to a list of outputs of the same length."""

    def __init__(
        self,
        name: str,
        run: Callable[[Sequence[In]], Sequence[Out]],
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[str, BatchStats], None] | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item[In, Out]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(QueueFull(self.name, "the service is shutting down"))

    async def submit(self, value: In) -> Out:
        if self._queue.qsize() >= self._max_queue:
            raise QueueFull(self.name, f"{self._max_queue} requests already waiting for the {self.name} model path")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(value, future, time.perf_counter()))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._max_wait_s
            while len(batch) < self._max_batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [item for item in batch if not item.future.cancelled()]  # clients that went away
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, [item.value for item in batch])
            except Exception:
                # Run the items one by one, so one request that makes the model raise fails alone.
                await self._run_singly(batch)
                continue
            finished = time.perf_counter()
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
            try:
                (output,) = await loop.run_in_executor(self._executor, self._run, [item.value])
            except Exception as e:
                if not item.future.done():
                    item.future.set_exception(e)
            else:
                if not item.future.done():
                    item.future.set_result(output)
