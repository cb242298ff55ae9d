"""GET /model: what is loaded, and the attribute names the other routes take."""

from __future__ import annotations

from fastapi import APIRouter

from ..bodies import StandardJSONRoute
from ..deps import EngineDep
from ..openapi import errors
from ..schemas import ModelInfo

router = APIRouter(route_class=StandardJSONRoute)


@router.get(
    "/model",
    tags=["model"],
    summary="The loaded checkpoint: metadata, device, attribute names",
    response_model=ModelInfo,
    responses=errors(401),
)
async def model_info(engine: EngineDep) -> ModelInfo:
    return ModelInfo(
        checkpoint=engine.checkpoint.name,
        version=engine.version,
        device=str(engine.device),
        inference_mode=engine.mode,
        attribute_names=list(engine.attribute_names),
        image_size=engine.image_size,
        default_attributes=dict(zip(engine.attribute_names, map(float, engine.default_attributes))),
        metadata=engine.meta.model_dump(mode="json"),
    )
