"""The FastAPI application: the served model in the lifespan (a ModelSlot: an Engine and its Core, swappable), the
middleware, the error handlers and the routes (service/routes/)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from jmvae.model.checkpoint import CheckpointError

from . import tracing
from .engine import Engine
from .errors import install_error_handlers
from .metrics import ServiceMetrics
from .middleware import OPEN_PATHS, install_middleware
from .models import ModelSlot, ReloadInProgress
from .openapi import DOCS_ASSETS_URL, declare_bearer_key
from .routes import ROUTERS, admin
from .routes.docs import DOCS_ASSETS
from .routes.operations import STATIC
from .settings import Settings

logger = logging.getLogger("jmvae.service")


def create_app(settings: Settings | None = None, tracer_provider: Any = None) -> FastAPI:
    """The service's app; requests are traced when OTEL_* is configured, or with `tracer_provider` (tests)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    app = FastAPI(
        title="jmvae",
        summary="JMVAE-kl: faces ↔ CelebA attributes through one joint latent space",
        description="Upload a face to read its 40 CelebA attributes, generate faces from attributes, or edit a "
        "face's attributes (Suzuki, Nakayama & Matsuo, 2016). Images are 64×64.",
        version="0.1.0",
        lifespan=_lifespan(settings, metrics),
        # FastAPI's own /docs and /redoc load their scripts from a CDN; routes/docs.py serves them from a package.
        docs_url=None,
        redoc_url=None,
        # Traces come from service/tracing.py and metrics from Prometheus; FastAPI's own OpenTelemetry would look up
        # the global providers (and the environment) on every request to find it has nothing to do: 3% of the
        # server's CPU under load (py-spy, bench/serving.py).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_middleware(app, settings, metrics)
    tracing.install(app, tracer_provider)  # outermost: a request's span covers everything done for it
    install_error_handlers(app, metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="static-docs")
    for router in ROUTERS:
        app.include_router(router)
    if settings.api_key is not None:  # swapping the model is for whoever holds the key; without one, no such route
        app.include_router(admin.router)
        declare_bearer_key(app, OPEN_PATHS)  # so that /docs offers "Authorize" and its "Try it out" sends the key
    return app


def _lifespan(
    settings: Settings, metrics: ServiceMetrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        slot = await ModelSlot.open(settings, metrics)  # a bad checkpoint stops the start here
        _log_loaded(slot.core.engine)  # no local: the lifespan's frame would keep a swapped-out engine alive
        warm_up = asyncio.create_task(slot.warm_up())
        warm_up.add_done_callback(_report_warm_up_failure)
        stop_listening = _reload_on_sighup(slot)
        try:
            yield {"slot": slot, "metrics": metrics}
        finally:
            stop_listening()
            warm_up.cancel()
            await slot.close()

    return lifespan


def _log_loaded(engine: Engine) -> None:
    name, version = engine.checkpoint.name, engine.version
    logger.info("loaded %s (model %s) on %s (%s inference)", name, version, engine.device, engine.mode)


def _report_warm_up_failure(task: asyncio.Task[None]) -> None:
    # A failed warm-up leaves /readyz at 503 for good; say why instead of failing silently.
    if not task.cancelled() and task.exception() is not None:
        logger.error("warm-up failed; the service stays unready", exc_info=task.exception())


def _reload_on_sighup(slot: ModelSlot) -> Callable[[], None]:
    """SIGHUP reloads the checkpoint, as POST /admin/reload does, in this process; returns what undoes it. With
    `jmvae serve --workers N` the supervisor forwards its SIGHUP to every worker (service/cli.py)."""
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones

    def on_sighup() -> None:
        task = loop.create_task(_logged_reload(slot))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        # Not the main thread (an app served by a test's thread), or no SIGHUP (Windows): reload over HTTP only.
        return lambda: None

    def stop_listening() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in reloads:
            task.cancel()

    return stop_listening


async def _logged_reload(slot: ModelSlot) -> None:
    # No client to answer: the outcome goes to the log, in one line.
    try:
        await slot.reload()  # which logs the swap
    except ReloadInProgress:
        logger.warning("SIGHUP: a reload is already in progress; ignored")
    except CheckpointError as e:
        logger.error("SIGHUP: reload refused, model %s keeps serving: %s", slot.version, e)
    except Exception:
        logger.exception("SIGHUP: reload failed, model %s keeps serving", slot.version)
