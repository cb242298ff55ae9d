"""The service's two model paths served by BentoML, with its adaptive batching (max 32).

    bench/.venv-bentoml/bin/bentoml serve bench.peers.bentoml_service:Front --port PORT

A batchable BentoML API takes a batch in each request, so one request with one photo or one JSON body is
batched the way BentoML's docs compose services: `Front` answers POST /attributes (multipart `image`) and
POST /generate (our JSON body) with the same JSON as `jmvae serve`, decodes and crops in its thread pool, and
calls `Model`, whose batchable APIs merge concurrent calls into one forward pass. One worker each.
BentoML's batch window is adaptive (it has no fixed wait to set), bounded by max_latency_ms.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from starlette.concurrency import run_in_threadpool

from bench.peers.common import MAX_BATCH_SIZE, BadRequest, Pipeline
from jmvae.service.engine import GenerateJob
from jmvae.service.images import ImageRejected


@bentoml.service(workers=1)
class Model:
    def __init__(self) -> None:
        self.pipeline = Pipeline()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE)
    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return self.pipeline.probabilities(pixels)

    # Jobs travel as dicts: BentoML turns dataclasses into dicts on the way between services.
    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE)
    def generate(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.pipeline.generate([GenerateJob(**job) for job in jobs])


@bentoml.service(workers=1)
class Front:
    model = bentoml.depends(Model)

    def __init__(self) -> None:
        self.pipeline = Pipeline()  # for decoding, cropping and validating; its model stays idle

    @bentoml.api
    async def attributes(self, image: Path) -> dict[str, Any]:
        try:
            face = await run_in_threadpool(lambda: self.pipeline.crop(image.read_bytes()))
        except ImageRejected as e:
            raise InvalidArgument(e.message) from None
        (row,) = await self.model.to_async.probabilities(face.pixels[None])
        return self.pipeline.attributes_body(face, row)

    @bentoml.api
    async def generate(
        self, attributes: dict[str, float] | None = None, n: int = 4, zeta: float = 1.0, seed: int | None = None
    ) -> dict[str, Any]:
        try:
            job = self.pipeline.generate_job({"attributes": attributes or {}, "n": n, "zeta": zeta, "seed": seed})
        except BadRequest as e:
            raise InvalidArgument(str(e)) from None
        (body,) = await self.model.to_async.generate([dataclasses.asdict(job)])
        return body
