"""What an answer says about the face it was computed from (POST /attributes and /edit), and the `box` a client
may send instead of having the face detected."""

from __future__ import annotations

from typing import Any, Final

from pydantic import ValidationError

from jmvae.model.faces import FaceCrop
from jmvae.model.preprocess import CropBox

from .schemas import Box, FaceBox

NO_FACE_NOTE: Final = "no face found; a centre crop of the image was used"
CLIENT_BOX_NOTE: Final = "the face box sent with the request was used; no face detection ran"


class BadBox(ValueError):
    """A `box` field that is not a face box inside the photo; the message says why, in one line."""


def parse_box(text: str) -> CropBox:
    """The `box` form field: a JSON object {"left", "top", "width", "height"} in the photo's pixels."""
    try:
        box = FaceBox.model_validate_json(text)  # pydantic's JSON parser: no NaN or Infinity, bounded nesting
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadBox(f"{where}: {first['msg']}" if where else first["msg"]) from None
    return CropBox(left=box.left, top=box.top, width=box.width, height=box.height)


def check_inside(box: CropBox, size: tuple[int, int]) -> None:
    width, height = size
    if box.right > width or box.bottom > height:
        raise BadBox(
            f"the box ({box.left:g}, {box.top:g}, {box.width:g} x {box.height:g}) reaches past the "
            f"{width}x{height} photo"
        )


def face_fields(face: FaceCrop) -> dict[str, Any]:
    """The fields of an answer that say which part of the photo the model saw, and why."""
    found = len(face.faces)
    if face.source == "client":
        note = CLIENT_BOX_NOTE
    elif not face.detected:
        note = NO_FACE_NOTE
    elif found > 1:
        note = f"{found} faces found; the answer is for the most confident one (face_box)"
    else:
        note = None
    return {
        "box": as_box(face.box),
        "face_box": as_box(face.faces[0].box) if face.detected else None,
        "face_detected": face.detected,
        "faces_found": found,
        "note": note,
    }


def as_box(box: CropBox) -> Box:
    return Box(left=box.left, top=box.top, width=box.width, height=box.height)
