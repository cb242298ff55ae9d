"""The service's two model paths as TorchServe handlers, batched by TorchServe (batchSize 32, maxBatchDelay 5 ms).

bench/serving.py archives this file twice, as the models `attributes` and `generate` (`handle` serves the path
its model is named after), with bench/peers/torchserve-model.yaml, and starts TorchServe on them:
POST /predictions/attributes takes the multipart upload `image`, POST /predictions/generate our JSON body, and
both answer the same JSON as `jmvae serve`. TorchServe runs one Python worker process per model; each gets a
batch of up to 32 requests, crops every photo, then runs one forward pass.
"""

from __future__ import annotations

import json
from typing import Any

from bench.peers.common import BadRequest, Pipeline
from jmvae.service.images import ImageRejected

Errors = dict[int, tuple[int, str]]  # request index → (HTTP status, detail)
_pipeline: Pipeline | None = None


def _load() -> Pipeline:
    global _pipeline
    if _pipeline is None:
        _pipeline = Pipeline()
    return _pipeline


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """TorchServe's entry point: a batch of requests to the model `context.model_name`, one answer each."""
    pipeline = _load()
    if data is None:  # TorchServe's initialisation call
        return None
    bodies, errors = PATHS[context.model_name](pipeline, data)
    return _answer(context, bodies, errors)


def _answer(context: Any, bodies: list[dict[str, Any] | None], errors: Errors) -> list[str]:
    """JSON per request; a failed one gets its own status, so that one bad request fails alone."""
    out = []
    for i, body in enumerate(bodies):
        context.set_response_content_type(i, "application/json")
        if i in errors:
            status, detail = errors[i]
            context.set_response_status(status, detail, i)
            out.append(json.dumps({"error": "bad_request", "detail": detail}))
        else:
            out.append(json.dumps(body))
    return out


def _attributes(pipeline: Pipeline, data: list[dict[str, Any]]) -> tuple[list[dict[str, Any] | None], Errors]:
    faces, errors = {}, {}
    for i, request in enumerate(data):
        try:
            faces[i] = pipeline.crop(bytes(request["image"]))
        except ImageRejected as e:
            errors[i] = (e.status, e.message)
        except KeyError:
            errors[i] = (422, "send the photo as the multipart part 'image'")
    bodies: list[dict[str, Any] | None] = [None] * len(data)
    if faces:
        for i, body in zip(faces, pipeline.attributes(list(faces.values())), strict=True):
            bodies[i] = body
    return bodies, errors


def _generate(pipeline: Pipeline, data: list[dict[str, Any]]) -> tuple[list[dict[str, Any] | None], Errors]:
    jobs, errors = {}, {}
    for i, request in enumerate(data):
        try:
            jobs[i] = pipeline.generate_job(request["body"])  # TorchServe has parsed a JSON body already
        except (BadRequest, KeyError) as e:
            errors[i] = (422, str(e))
    bodies: list[dict[str, Any] | None] = [None] * len(data)
    if jobs:
        for i, body in zip(jobs, pipeline.generate(list(jobs.values())), strict=True):
            bodies[i] = body
    return bodies, errors


PATHS = {"attributes": _attributes, "generate": _generate}
