"""The work of one request on each model path, shared by every server in the serving benchmark.

Each peer (LitServe, BentoML, TorchServe) and the in-process ceiling in bench/serving.py call these functions,
and they call the service's own core (`jmvae.service.core.Core`: upload decoding, face crop, validation, the
answers) and the batch paths of its `Engine`, so every server does exactly what `jmvae serve` does per request
and only the serving machinery differs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from jmvae.model.faces import FaceCrop
from jmvae.service.core import Core, Generation, InvalidInput
from jmvae.service.engine import Engine, GenerateJob
from jmvae.service.metrics import ServiceMetrics
from jmvae.service.schemas import GenerateRequest
from jmvae.service.settings import Settings

MAX_BATCH_SIZE = 32  # every server's largest batch, as JMVAE_MAX_BATCH_SIZE's default


class BadRequest(ValueError):
    """The request body is not what the path takes; each server answers it with its own 4xx."""


class Pipeline:
    """One loaded checkpoint with the service's core, called synchronously on the caller's thread."""

    def __init__(self, settings: Settings | None = None) -> None:
        # From the environment by default (JMVAE_CHECKPOINT, JMVAE_DEVICE, limits), as `jmvae serve` reads it.
        self.settings = settings or Settings()
        # The Engine's batchers and executor stay unused: the servers batch, and call its batch paths directly.
        self.engine = Engine.load(self.settings, ServiceMetrics())
        self.engine.capture()  # on CUDA, the graphs `jmvae serve` captures while it warms up
        self.core = Core(self.engine, self.settings)
        self.names = self.engine.attribute_names

    def crop(self, upload: bytes) -> FaceCrop:
        """Decode an uploaded photo, find the face and crop it (the CPU work before the model)."""
        return self.core.crop(upload)

    def probabilities(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """One forward pass for a batch of cropped faces: (B, A) attribute probabilities."""
        return np.stack([e.probabilities for e in self.engine.encode_batch(pixels)])

    def attributes_body(self, face: FaceCrop, probabilities: np.ndarray) -> dict[str, Any]:
        """The JSON body of POST /attributes for one face."""
        return self.core.attributes_response(face, probabilities).model_dump(mode="json")

    def attributes(self, faces: Sequence[FaceCrop]) -> list[dict[str, Any]]:
        """One forward pass for the batch; the JSON body of POST /attributes for each face."""
        rows = self.probabilities([face.pixels for face in faces])
        return [self.attributes_body(face, row) for face, row in zip(faces, rows, strict=True)]

    def generate_job(self, body: bytes | str | dict[str, Any]) -> GenerateJob:
        """Validates a POST /generate body as the service does (names, limits) and builds the model's job."""
        try:
            request = GenerateRequest.model_validate(json.loads(body) if isinstance(body, bytes | str) else body)
            return self.core.generate_job(request)
        except InvalidInput as e:
            raise BadRequest(f"{'.'.join(e.loc)}: {e.message}") from None
        except ValueError as e:  # pydantic's ValidationError and json's JSONDecodeError alike
            raise BadRequest(str(e)) from None

    def generate(self, jobs: Sequence[GenerateJob]) -> list[dict[str, Any]]:
        """One forward pass for the batch; the JSON body of POST /generate (faces as base64 PNGs) for each job."""
        generated = self.engine.generate_batch(jobs)
        return [
            self.core.generate_response(Generation(job, g)).model_dump(mode="json")
            for job, g in zip(jobs, generated, strict=True)
        ]
