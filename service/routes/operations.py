"""The web page and what operators and load balancers poll: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..bodies import StandardJSONRoute
from ..deps import EngineDep, MetricsDep
from ..errors import error_response
from ..openapi import ERRORS

STATIC = Path(__file__).parents[1] / "static"
# The page loads nothing from elsewhere (it must work offline); images arrive as data: URLs, the photo as a blob:.
PAGE_CSP = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'"

router = APIRouter(route_class=StandardJSONRoute)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["operations"],
    summary="Readiness: checkpoint loaded and warmed up (503 before)",
    responses={503: ERRORS[503]},
)
async def readyz(engine: EngineDep) -> JSONResponse:
    if not engine.ready:
        return error_response(503, "not_ready", "the model is warming up", {"Retry-After": "1"})
    # Which process answered: with --workers N, a client (the benchmarks) can wait until every one is ready.
    return JSONResponse({"status": "ready", "worker": os.getpid()})


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
