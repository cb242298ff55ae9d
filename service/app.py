"""The FastAPI application: one Engine and its Core in the lifespan, the middleware, the error handlers and the
routes (service/routes/)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .core import Core
from .engine import Engine
from .errors import install_error_handlers
from .metrics import ServiceMetrics
from .middleware import OPEN_PATHS, install_middleware
from .openapi import DOCS_ASSETS_URL, declare_bearer_key
from .routes import ROUTERS
from .routes.docs import DOCS_ASSETS
from .routes.operations import STATIC
from .settings import Settings

logger = logging.getLogger("jmvae.service")


def create_app(settings: Settings | None = None) -> FastAPI:
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
    )
    install_middleware(app, settings, metrics)
    install_error_handlers(app, metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="static-docs")
    for router in ROUTERS:
        app.include_router(router)
    if settings.api_key is not None:
        declare_bearer_key(app, OPEN_PATHS)  # so that /docs offers "Authorize" and its "Try it out" sends the key
    return app


def _lifespan(
    settings: Settings, metrics: ServiceMetrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = Engine.load(settings, metrics)  # a bad checkpoint stops the start here
        core = Core(engine, settings)
        logger.info("loaded %s on %s (%s inference)", engine.checkpoint.name, engine.device, engine.mode)
        await engine.start()
        warm_up = asyncio.create_task(engine.warm_up())
        warm_up.add_done_callback(_report_warm_up_failure)
        try:
            yield {"engine": engine, "core": core, "metrics": metrics}
        finally:
            warm_up.cancel()
            await engine.stop()

    return lifespan


def _report_warm_up_failure(task: asyncio.Task[None]) -> None:
    # A failed warm-up leaves /readyz at 503 for good; say why instead of failing silently.
    if not task.cancelled() and task.exception() is not None:
        logger.error("warm-up failed; the service stays unready", exc_info=task.exception())
