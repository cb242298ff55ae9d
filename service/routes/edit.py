"""POST /edit: a face photo and attribute changes → the edited face, as JSON or as one image."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ..bodies import StandardJSONRoute
from ..deps import CoreDep, DeadlineDep, EditUploadDep
from ..encoding import accepted_image_type, encode_image
from ..openapi import BOX_PART, CHANGES_PART, IMAGE_OK, IMAGE_PART, errors, multipart
from ..schemas import EditResponse
from ..tracing import step

router = APIRouter(route_class=StandardJSONRoute)


@router.post(
    "/edit",
    tags=["model"],
    summary="Face photo + attribute changes → edited face",
    response_model=EditResponse,
    responses=IMAGE_OK | errors(401, 413, 415, 422, 503),
    openapi_extra=multipart(image=IMAGE_PART, changes=CHANGES_PART, box=BOX_PART),
)
async def edit(request: Request, core: CoreDep, deadline: DeadlineDep, upload: EditUploadDep) -> Any:
    edited = await deadline.guard(core.edit(upload.photo, upload.changes, upload.box, deadline.at))
    if media_type := accepted_image_type(request.headers.get("accept", "")):
        with step("encode"):
            encoded = await run_in_threadpool(encode_image, edited.edited, media_type)
        return Response(encoded, media_type=media_type)
    return await run_in_threadpool(core.edit_response, edited)
