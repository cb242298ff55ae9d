"""POST /admin/reload: swap in the checkpoint at JMVAE_CHECKPOINT without downtime. Included only when an API key
is set (service/app.py), and then behind it like every route but the open ones."""

from __future__ import annotations

from fastapi import APIRouter

from ..bodies import StandardJSONRoute
from ..deps import SlotDep
from ..openapi import errors
from ..schemas import ReloadResponse

router = APIRouter(route_class=StandardJSONRoute)


@router.post(
    "/admin/reload",
    tags=["operations"],
    summary="Reload the checkpoint: validated and warmed up beside the served model, then swapped in",
    response_model=ReloadResponse,
    responses=errors(401, 409, 422),
)
async def reload(slot: SlotDep) -> ReloadResponse:
    swap = await slot.reload()
    return ReloadResponse(version=swap.version, previous=swap.previous, checkpoint=slot.core.engine.checkpoint.name)
