"""The work of one request on each model path, shared by every server in the serving benchmark.

Each peer (LitServe, BentoML, TorchServe) and the in-process ceiling in bench/serving.py call these functions,
and they call the service's own pieces: the same upload decoding, face detector and crop, the same batched
model paths of `Engine` and the same response models, so every server does exactly what `jmvae serve` does
per request and only the serving machinery differs.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from jmvae.model.faces import FaceCrop, FaceCropper
from jmvae.service.engine import Engine, GenerateJob
from jmvae.service.faces import face_fields
from jmvae.service.images import decode_upload
from jmvae.service.metrics import ServiceMetrics
from jmvae.service.render import png_base64
from jmvae.service.schemas import AttributesResponse, GenerateRequest, GenerateResponse
from jmvae.service.settings import Settings

MAX_BATCH_SIZE = 32  # every server's largest batch, as JMVAE_MAX_BATCH_SIZE's default


class BadRequest(ValueError):
    """The request body is not what the path takes; each server answers it with its own 4xx."""


class Pipeline:
    """One loaded checkpoint with the service's model paths, called synchronously on the caller's thread."""

    def __init__(self, settings: Settings | None = None) -> None:
        # From the environment by default (JMVAE_CHECKPOINT, JMVAE_DEVICE, limits), as `jmvae serve` reads it.
        self.settings = settings or Settings()
        # The Engine's batchers and executor stay unused: the servers batch, and call its model paths directly.
        self.engine = Engine.load(self.settings, ServiceMetrics())
        self.cropper = FaceCropper(self.engine.meta.preprocessing)
        self.names = self.engine.attribute_names

    def crop(self, upload: bytes) -> FaceCrop:
        """Decode an uploaded photo, find the face and crop it (the CPU work before the model)."""
        image = decode_upload(upload, self.settings.max_image_pixels, self.settings.max_upload_bytes)
        return self.cropper.crop(image)

    def probabilities(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """One forward pass for a batch of cropped faces: (B, A) attribute probabilities."""
        return np.stack([e.probabilities for e in self.engine._encode_images(pixels)])

    def attributes_body(self, face: FaceCrop, probabilities: np.ndarray) -> dict[str, Any]:
        """The JSON body of POST /attributes for one face."""
        by_name = dict(zip(self.names, map(float, probabilities)))
        return AttributesResponse(
            probabilities=by_name, present=[n for n, p in by_name.items() if p >= 0.5], **face_fields(face),
        ).model_dump(mode="json")

    def attributes(self, faces: Sequence[FaceCrop]) -> list[dict[str, Any]]:
        """One forward pass for the batch; the JSON body of POST /attributes for each face."""
        rows = self.probabilities([face.pixels for face in faces])
        return [self.attributes_body(face, row) for face, row in zip(faces, rows, strict=True)]

    def generate_job(self, body: bytes | str | dict[str, Any]) -> GenerateJob:
        """Validates a POST /generate body as the service does (names, limits) and builds the model's job."""
        try:
            request = GenerateRequest.model_validate(json.loads(body) if isinstance(body, bytes | str) else body)
        except ValueError as e:  # pydantic's ValidationError and json's JSONDecodeError alike
            raise BadRequest(str(e)) from None
        unknown = sorted(set(request.attributes) - set(self.names))
        if unknown:
            raise BadRequest(f"unknown attribute(s) {', '.join(unknown[:5])}")
        if request.n > self.settings.max_faces or request.zeta > self.settings.max_zeta:
            raise BadRequest(f"n must be at most {self.settings.max_faces}, zeta at most {self.settings.max_zeta}")
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        return GenerateJob(self.engine.attribute_vector(request.attributes), request.n, request.zeta, seed)

    def generate(self, jobs: Sequence[GenerateJob]) -> list[dict[str, Any]]:
        """One forward pass for the batch; the JSON body of POST /generate (faces as base64 PNGs) for each job."""
        generated = self.engine._generate(jobs)
        return [GenerateResponse(
            attributes=dict(zip(self.names, map(float, job.attributes))), seed=job.seed, zeta=job.zeta,
            average_face=png_base64(g.average), faces=[png_base64(f) for f in g.faces],
        ).model_dump(mode="json") for job, g in zip(jobs, generated, strict=True)]
