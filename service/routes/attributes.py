"""POST /attributes: a face photo → its attribute probabilities."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from ..bodies import StandardJSONRoute
from ..deps import CoreDep, DeadlineDep, UploadDep
from ..openapi import BOX_PART, IMAGE_PART, errors, multipart
from ..schemas import AttributesResponse

router = APIRouter(route_class=StandardJSONRoute)


@router.post(
    "/attributes",
    tags=["model"],
    summary="Face photo → attribute probabilities",
    response_model=AttributesResponse,
    responses=errors(401, 413, 415, 422, 503),
    openapi_extra=multipart(image=IMAGE_PART, box=BOX_PART),
)
async def attributes(
    core: CoreDep,
    deadline: DeadlineDep,
    upload: UploadDep,
    faces: Annotated[
        Literal["one", "all"],
        Query(description="one: the most confident face; all: also every face found, in `faces`, best first"),
    ] = "one",
) -> AttributesResponse:
    return await deadline.guard(core.attributes(upload.photo, upload.box, faces == "all", deadline.at))
