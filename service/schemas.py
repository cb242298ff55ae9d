"""Request and response bodies of the HTTP API (the public contract)."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

AttributeValue = Annotated[
    float,
    Field(
        ge=-2.0,
        le=2.0,
        allow_inf_nan=False,
        description="-1 absent, 1 present, ±2 emphasised (the paper's Figure 1); any value in [-2, 2]",
    ),
]


def _finite(values: dict[str, float]) -> dict[str, float]:
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name}: value must be a finite number")
    return values


class Box(BaseModel):
    left: float
    top: float
    width: float
    height: float


class FaceBox(BaseModel):
    """A face's box in the photo's pixels, as a face detector reports it; the crop is this box grown by the
    checkpoint's framing (×1.3), exactly as around a detected face."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    left: float = Field(ge=0)
    top: float = Field(ge=0)
    width: float = Field(gt=0)
    height: float = Field(gt=0)


class FaceFields(BaseModel):
    """Which part of the photo the model saw, and why."""

    box: Box = Field(description="the crop of the uploaded image that was fed to the model, in its pixels")
    face_box: Box | None = Field(
        None,
        description="the detected face the answer is for, before the framing "
        "(×1.3); send it back as `box` to skip detection. None without a detection",
    )
    face_detected: bool = Field(description="a face passed the detector's confidence threshold")
    faces_found: int = Field(0, description="faces that passed the detector; the answer is for the most confident")
    note: str | None = Field(
        None,
        description="set when no face was found (centre crop), the client's box was used, or several faces were found",
    )


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code")
    detail: str = Field(description="what was wrong, in one line")


class DetectedFace(BaseModel):
    """One face of the photo, with ?faces=all."""

    box: Box = Field(description="the crop fed to the model, in the photo's pixels")
    face_box: Box = Field(description="the face as the detector boxed it")
    confidence: float = Field(description="the detector's level weight; higher is surer")
    probabilities: dict[str, float] = Field(description="p(attribute present | this face), by attribute name")
    present: list[str] = Field(description="attributes with probability ≥ 0.5")


class AttributesResponse(FaceFields):
    probabilities: dict[str, float] = Field(description="p(attribute present | image), by attribute name")
    present: list[str] = Field(description="attributes with probability ≥ 0.5")
    faces: list[DetectedFace] | None = Field(
        None,
        description="with ?faces=all: every detected face, most confident first, at most "
        "JMVAE_MAX_FACES_PER_PHOTO (the first is the one the fields above answer for); empty when no face was "
        "found or a box was sent",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "probabilities": {"Male": 0.93, "Smiling": 0.12, "Eyeglasses": 0.02},
                    "present": ["Male"],
                    "box": {"left": 120.0, "top": 80.0, "width": 260.0, "height": 260.0},
                    "face_box": {"left": 150.0, "top": 110.0, "width": 200.0, "height": 200.0},
                    "face_detected": True,
                    "faces_found": 1,
                    "note": None,
                }
            ]
        }
    )


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"attributes": {"Smiling": 2, "Male": -1, "Blond_Hair": 1}, "n": 4, "zeta": 1.0, "seed": 7}]
        },
    )

    attributes: dict[str, AttributeValue] = Field(
        default_factory=dict,
        description="attribute values by CelebA name; each unspecified attribute takes its most likely value given "
        "the specified ones, by the model's training data (a naive-Bayes vote of pairwise counts; with none "
        'specified, the majority values of GET /model): {"Bald": 2} asks for a bald man, not a bald woman',
    )
    n: int = Field(4, ge=0, description="random faces besides the average face")
    zeta: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="ε ~ N(0, ζ I) for z = z_mean + σ ⊙ ε")
    seed: int | None = Field(None, ge=0, lt=2**63, description="same seed, same faces; omitted: drawn and returned")

    _finite = field_validator("attributes")(_finite)


class GenerateResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "attributes": {"Smiling": 2.0, "Male": -1.0, "Young": 1.0},
                    "seed": 7,
                    "zeta": 1.0,
                    "average_face": "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJ...",
                    "faces": ["iVBORw0KGgo..."],
                }
            ]
        }
    )

    attributes: dict[str, float] = Field(description="the full attribute vector the faces were generated from")
    seed: int
    zeta: float
    average_face: str = Field(description="base64 PNG decoded from the mean of q(z|w)")
    faces: list[str] = Field(description="base64 PNGs decoded from z = z_mean + σ ⊙ ε")


class EditChanges(BaseModel):
    """The `changes` form field of POST /edit: attribute values that replace those predicted for the input."""

    model_config = ConfigDict(extra="forbid")

    changes: dict[str, AttributeValue]

    _finite = field_validator("changes")(_finite)


class EditResponse(FaceFields):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "probabilities": {"Smiling": 0.08, "Eyeglasses": 0.01},
                    "attributes": {"Smiling": -1.0, "Eyeglasses": -1.0},
                    "edited_attributes": {"Smiling": 2.0, "Eyeglasses": -1.0},
                    "box": {"left": 18.3, "top": 52.3, "width": 144.3, "height": 144.3},
                    "face_box": {"left": 39.9, "top": 74.0, "width": 111.0, "height": 111.0},
                    "face_detected": True,
                    "faces_found": 1,
                    "note": None,
                    "input_face": "iVBORw0KGgo...",
                    "x_mean": "iVBORw0KGgo...",
                    "x_prime_mean": "iVBORw0KGgo...",
                    "edited_face": "iVBORw0KGgo...",
                }
            ]
        }
    )

    probabilities: dict[str, float] = Field(description="attributes predicted for the input face")
    attributes: dict[str, float] = Field(description="w: the predicted attributes as -1/1")
    edited_attributes: dict[str, float] = Field(description="w′: w with the changes applied")
    input_face: str = Field(description="base64 PNG: x, the 64×64 crop the model saw")
    x_mean: str = Field(description="base64 PNG: the average face of w")
    x_prime_mean: str = Field(description="base64 PNG: the average face of w′")
    edited_face: str = Field(description="base64 PNG: x′ = x + x′_mean − x_mean, clipped to valid pixels")


class ModelInfo(BaseModel):
    checkpoint: str
    version: str = Field(description="the model's version, as every response's X-Model-Version header says it")
    device: str
    inference_mode: str = Field(description="'kl': unimodal encoders (JMVAE-kl); 'zero': joint encoder with zeros")
    attribute_names: list[str]
    default_attributes: dict[str, float]
    image_size: int
    metadata: dict[str, object] = Field(description="the checkpoint's metadata")


class ReloadResponse(BaseModel):
    version: str = Field(description="the model now serving (X-Model-Version)")
    previous: str = Field(description="the model it replaced; equal to version when the file had not changed")
    checkpoint: str
