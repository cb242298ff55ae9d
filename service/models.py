"""The model being served, swappable while it serves: a ModelSlot holds the current Core, lends it to each request
(a lease), and reloads the checkpoint beside it: load, validate, warm up, swap, then stop the old engine once the
requests that hold it have finished."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .core import Core
from .engine import Engine
from .metrics import ServiceMetrics
from .settings import Settings

logger = logging.getLogger("jmvae.service")

# How long a retired model waits for the requests still holding it; longer than any request takes (nginx gives
# an upstream 30 s), after which the stragglers get 503 "shutting down" rather than keeping two models for good.
DRAIN_S = 60.0


def _freeze_heap() -> None:
    """Puts every object alive now out of the cyclic garbage collector's reach (gc.freeze), once the model is warm:
    the loaded model and the modules of torch, FastAPI and the rest are some 200,000 objects that no request frees,
    and each full collection walked them all, a pause that every request in flight waited out (an A/B run of the
    server, attributes → face at 32 clients: p99 212 against 118 ms frozen). Unfrozen and collected first, so
    that what a reload has retired is freed."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ReloadInProgress(Exception):
    """A reload was asked for while another one runs (HTTP: 409)."""


@dataclass(eq=False)
class _Served:
    core: Core
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass(frozen=True)
class Swap:
    previous: str  # model versions (Engine.version)
    version: str


class ModelSlot:
    """The lifespan's holder of the served model; routes read `lease()` per request, never a Core kept aside."""

    def __init__(self, core: Core, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._served = _Served(core)
        self._lock = asyncio.Lock()  # one reload at a time: never three models in memory

    @classmethod
    async def open(cls, settings: Settings, metrics: ServiceMetrics) -> ModelSlot:
        """Loads the checkpoint (CheckpointError with a one-line reason) and starts it; warm_up() makes it ready."""
        engine = Engine.load(settings, metrics)  # a bad checkpoint stops the start here
        await engine.start()
        return cls(Core(engine, settings), settings, metrics)

    @property
    def core(self) -> Core:
        return self._served.core

    @property
    def version(self) -> str:
        return self._served.core.engine.version

    @property
    def reloading(self) -> bool:
        return self._lock.locked()

    @contextmanager
    def lease(self) -> Iterator[Core]:
        """The current Core for one request: a reload retires it only once every lease on it has ended."""
        served = self._served
        served.in_flight += 1
        served.idle.clear()
        try:
            yield served.core
        finally:
            served.in_flight -= 1
            if served.in_flight == 0:
                served.idle.set()

    async def warm_up(self) -> None:
        await self._served.core.engine.warm_up()
        _freeze_heap()

    async def reload(self) -> Swap:
        """Loads settings.checkpoint again beside the served model, warms it up and swaps it in; the old one keeps
        serving if the file is refused (CheckpointError) or anything else fails before the swap."""
        if self._lock.locked():
            raise ReloadInProgress("a reload is already in progress")
        async with self._lock:
            engine = await asyncio.to_thread(Engine.load, self.settings, self.metrics)
            try:
                await engine.warm_up()
                await engine.start()  # after the warm-up: the gauges follow the engine that serves
            except BaseException:
                await engine.stop()
                raise
            old = self._served
            self._served = _Served(Core(engine, self.settings))  # atomic: no await between warm-up and here
            swap = Swap(old.core.engine.version, engine.version)
            logger.info("reloaded %s: model %s serves (was %s)", engine.checkpoint.name, swap.version, swap.previous)
            await self._retire(old)
            del old  # so that the collection before the heap is frozen again frees the retired model
            _freeze_heap()
            return swap

    async def _retire(self, old: _Served) -> None:
        try:
            await asyncio.wait_for(old.idle.wait(), DRAIN_S)
        except TimeoutError:
            version = old.core.engine.version
            logger.warning("%d requests still on model %s after %.0f s; stopping it", old.in_flight, version, DRAIN_S)
        await old.core.engine.stop()

    async def close(self) -> None:
        await self._served.core.engine.stop()
