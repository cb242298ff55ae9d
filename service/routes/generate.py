"""POST /generate: attributes → the average face and random faces, as JSON or as one image."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from jmvae.model.render import grid

from ..bodies import StandardJSONRoute
from ..deps import CoreDep, DeadlineDep
from ..encoding import accepted_image_type, encode_image
from ..openapi import IMAGE_OK, errors
from ..schemas import GenerateRequest, GenerateResponse
from ..tracing import step

router = APIRouter(route_class=StandardJSONRoute)


@router.post(
    "/generate",
    tags=["model"],
    summary="Attributes → average face and random faces",
    response_model=GenerateResponse,
    responses=IMAGE_OK | errors(401, 413, 422, 503),
)
async def generate(request: Request, core: CoreDep, deadline: DeadlineDep, body: GenerateRequest) -> Any:
    generation = await deadline.guard(core.generate(body, deadline.at))
    # Encoding is CPU work, about 0.25 ms a face: one face costs less here than the thread hop that would take it
    # off the event loop; more go to a thread, like decoding.
    inline = body.n == 0
    if media_type := accepted_image_type(request.headers.get("accept", "")):
        image = generation.result.average if inline else grid(generation.images)
        with step("encode"):
            encoded = (
                encode_image(image, media_type) if inline else await run_in_threadpool(encode_image, image, media_type)
            )
        return Response(encoded, media_type=media_type)
    return core.generate_response(generation) if inline else await run_in_threadpool(core.generate_response, generation)
