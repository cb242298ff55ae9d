"""What the service does, without HTTP: read a photo's attributes, generate faces from attributes, edit a photo's
attributes. The FastAPI routes (service/routes/) and the benchmark's peer servers (bench/peers/) call these; each
operation is a few named steps (crop, validate, the engine's batched model paths, the answer) that a caller may
also run one by one, as the peers do with their own batching."""

from __future__ import annotations

import asyncio
import difflib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from jmvae.model.editing import edit_face, read_attributes, with_changes
from jmvae.model.faces import Face, FaceCrop, FaceCropper
from jmvae.model.preprocess import CropBox

from .encoding import png_base64
from .engine import Engine, Generated, GenerateJob
from .faces import BadBox, as_box, check_inside, face_fields, parse_box
from .images import decode_upload
from .schemas import AttributesResponse, DetectedFace, EditResponse, GenerateRequest, GenerateResponse
from .settings import Settings
from .tracing import step


class InvalidInput(ValueError):
    """A request the model cannot answer as asked; `loc` names the field, as in a validation error (HTTP: 422)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass(frozen=True)
class Generation:
    job: GenerateJob  # what was generated, with the seed drawn when the request gave none
    result: Generated

    @property
    def images(self) -> list[np.ndarray]:
        """The average face, then the random ones."""
        return [self.result.average, *self.result.faces]


@dataclass(frozen=True)
class Edit:
    face: FaceCrop  # the crop of the photo the model read
    probabilities: np.ndarray  # (A,) p(w_i = 1 | x)
    attributes: np.ndarray  # w: the prediction as -1/1
    edited_attributes: np.ndarray  # w′: w with the changes
    x_mean: np.ndarray  # decoded from the mean of q(z|w)
    x_prime_mean: np.ndarray  # decoded from the mean of q(z|w′)
    edited: np.ndarray  # x′ = x + x′_mean − x_mean


class Core:
    """One loaded model's operations: an Engine (the batched model paths) and the face crop it was trained on."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.cropper = FaceCropper(engine.meta.preprocessing)  # the crop its model was trained on (load_jmvae checks)
        self.names = engine.attribute_names

    # Steps ---------------------------------------------------------------------------------------------
    def crop(self, photo: bytes, box: str | None = None) -> FaceCrop:
        """Decodes an uploaded photo (ImageRejected when it is not one the service takes) and crops its face:
        around `box`, the `box` form field's JSON, or else around the most confident detection."""
        image, face_box = self._decode(photo, box)
        with step("face detection"):
            return self.cropper.crop(image, face_box)

    def crop_every_face(self, photo: bytes, box: str | None = None) -> tuple[FaceCrop, list[np.ndarray]]:
        """`crop`, and the model inputs of the next most confident faces, up to max_faces_per_photo in all."""
        image, face_box = self._decode(photo, box)
        with step("face detection"):
            return self.cropper.crop_every_face(image, self.settings.max_faces_per_photo, face_box)

    def _decode(self, photo: bytes, box: str | None) -> tuple[Image.Image, CropBox | None]:
        try:
            face_box = parse_box(box) if box is not None else None  # before the costly decode
            with step("decode"):
                image = decode_upload(photo, self.settings.max_image_pixels, self.settings.max_upload_bytes)
            if face_box is not None:
                check_inside(face_box, image.size)
        except BadBox as e:
            raise InvalidInput(("box",), str(e)) from None
        return image, face_box

    def check_names(self, values: Mapping[str, float], field: str) -> None:
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            shown = ", ".join(_with_suggestion(name, self.names) for name in unknown[:5])
            raise InvalidInput(
                (field, unknown[0]), f"unknown attribute(s) {shown}; GET /model lists the {len(self.names)} names"
            )

    def generate_job(self, request: GenerateRequest) -> GenerateJob:
        """The model's job for a request, within the service's limits; a seed is drawn when none is given."""
        self.check_names(request.attributes, "attributes")
        if request.n > self.settings.max_faces:
            raise InvalidInput(("n",), f"must be at most {self.settings.max_faces}")
        if request.zeta > self.settings.max_zeta:
            raise InvalidInput(("zeta",), f"must be at most {self.settings.max_zeta}")
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        return GenerateJob(self.engine.attribute_vector(request.attributes), request.n, request.zeta, seed)

    def attributes_response(self, face: FaceCrop, probabilities: np.ndarray) -> AttributesResponse:
        return AttributesResponse(**self._read(probabilities), **face_fields(face))

    def generate_response(self, generation: Generation) -> GenerateResponse:
        """The JSON answer, faces as base64 PNGs (about 0.25 ms per face: on an event loop, more than one belongs on
        a thread)."""
        job = generation.job
        with step("encode"):
            encoded = [png_base64(image) for image in generation.images]
        return GenerateResponse(
            attributes=self._by_name(job.attributes),
            seed=job.seed,
            zeta=job.zeta,
            average_face=encoded[0],
            faces=encoded[1:],
        )

    def edit_response(self, edit: Edit) -> EditResponse:
        """The JSON answer, faces as base64 PNGs (CPU work, as generate_response)."""
        with step("encode"):
            images = [png_base64(i) for i in (edit.face.pixels, edit.x_mean, edit.x_prime_mean, edit.edited)]
        return EditResponse(
            probabilities=self._by_name(edit.probabilities),
            attributes=self._by_name(edit.attributes),
            edited_attributes=self._by_name(edit.edited_attributes),
            **face_fields(edit.face),
            input_face=images[0],
            x_mean=images[1],
            x_prime_mean=images[2],
            edited_face=images[3],
        )

    def _detected_face(self, face: Face, probabilities: np.ndarray) -> DetectedFace:
        return DetectedFace(
            box=as_box(face.box.scaled(self.cropper.detection.box_scale)),
            face_box=as_box(face.box),
            confidence=face.confidence,
            **self._read(probabilities),
        )

    def _read(self, probabilities: np.ndarray) -> dict[str, Any]:
        """An answer's `probabilities` by name and the names `present` (p ≥ 0.5)."""
        by_name = self._by_name(probabilities)
        return {"probabilities": by_name, "present": [n for n, p in by_name.items() if p >= 0.5]}

    def _by_name(self, values: np.ndarray) -> dict[str, float]:
        return dict(zip(self.names, map(float, values)))

    # Operations ----------------------------------------------------------------------------------------
    # `deadline` (time.monotonic(), None: none): when the request's model work must have started; one deadline
    # covers every model step of an operation.
    async def attributes(
        self, photo: bytes, box: str | None = None, every_face: bool = False, deadline: float | None = None
    ) -> AttributesResponse:
        """Photo → p(attribute | face) for the most confident face in it, and with `every_face` for each face."""
        if not every_face:
            with self.engine.image_path.upstream():  # a batch forming meanwhile waits for this face
                face = await asyncio.to_thread(self.crop, photo, box)  # decoding and detection: off the event loop
            encoded = await self.engine.encode(face.pixels, deadline)
            return self.attributes_response(face, encoded.probabilities)
        with self.engine.image_path.upstream():
            face, others = await asyncio.to_thread(self.crop_every_face, photo, box)
        # One submission per face: the batcher runs them in one forward pass.
        answers = await asyncio.gather(*(self.engine.encode(pixels, deadline) for pixels in (face.pixels, *others)))
        response = self.attributes_response(face, answers[0].probabilities)
        detected = face.faces if face.detected else ()
        response.faces = [self._detected_face(f, a.probabilities) for f, a in zip(detected, answers)]
        return response

    async def generate(self, request: GenerateRequest, deadline: float | None = None) -> Generation:
        """Attributes → the face decoded from the mean of q(z|w) and `n` from z = mean + σ ⊙ ε, ε ~ N(0, ζ I)."""
        job = self.generate_job(request)
        return Generation(job, await self.engine.generate(job, deadline))

    async def edit(
        self, photo: bytes, changes: Mapping[str, float], box: str | None = None, deadline: float | None = None
    ) -> Edit:
        """Photo + attribute changes → x′ = x + x′_mean − x_mean (jmvae.model.editing)."""
        self.check_names(changes, "changes")
        with self.engine.image_path.upstream():
            face = await asyncio.to_thread(self.crop, photo, box)
        encoded = await self.engine.encode(face.pixels, deadline)
        w = read_attributes(encoded.probabilities)
        w_prime = with_changes(w, self.names, changes)
        means = await asyncio.gather(
            self.engine.generate(GenerateJob(w, 0, 0.0, 0), deadline),
            self.engine.generate(GenerateJob(w_prime, 0, 0.0, 0), deadline),
        )
        x_mean, x_prime_mean = means[0].average, means[1].average
        return Edit(
            face, encoded.probabilities, w, w_prime, x_mean, x_prime_mean, edit_face(face.pixels, x_mean, x_prime_mean)
        )


def _with_suggestion(name: str, names: Sequence[str]) -> str:
    """`name`, followed by the valid name it most likely meant: a case-insensitive match first ("smiling"), then
    the closest spelling ("Smilling"), so a typo costs one request instead of a trip to GET /model."""
    by_lower = {valid.lower(): valid for valid in names}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    guess = by_lower.get(name.lower()) or (by_lower[close[0]] if close else None)
    return f'{name} (did you mean "{guess}"?)' if guess is not None else name
