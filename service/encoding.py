"""Faces out over HTTP: base64 PNGs in JSON, or one image in the format the client asks for (Accept)."""

from __future__ import annotations

import base64
import io
from typing import Any

import cv2
import numpy as np
from PIL import Image

_PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 3, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB → PNG. OpenCV at zlib level 3 with run-length matching only (Z_RLE) rather than PIL's
    encoder: the same pixels in a third of the CPU time for a 64x64 face, for about as many bytes
    (bench/serving.py's encoding table): a decoded face is smooth, so after PNG's row filters the runs are what
    compresses, and zlib's search for longer matches costs time for nothing. Every answer with a face pays it,
    once per face."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), _PNG_OPTIONS)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} image as PNG")
    return encoded.tobytes()


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


# Media types a client may ask for with Accept instead of JSON, in order of preference when ranked equally.
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp")
# PNG stays lossless; JPEG and WebP at quality 90 take a fifth and a tenth of its bytes for a 64x64 face.
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "image/jpeg": {"format": "JPEG", "quality": 90},
    "image/webp": {"format": "WEBP", "quality": 90},
}


def encode_image(image: np.ndarray, media_type: str) -> bytes:
    """(H, W, 3) uint8 in one of IMAGE_MEDIA_TYPES."""
    if media_type == "image/png":
        return png_bytes(image)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, **_SAVE_OPTIONS[media_type])
    return buffer.getvalue()


def accepted_image_type(accept: str) -> str | None:
    """The image type an Accept header ranks highest when it ranks it at least as high as JSON, else None (answer
    JSON); equal ranks go to PNG, then JPEG, then WebP."""
    ranked: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        ranked[media.lower()] = q
    best = max(IMAGE_MEDIA_TYPES, key=lambda media: ranked.get(media, 0.0))  # max keeps the first of equals
    q = ranked.get(best, 0.0)
    return best if q > 0 and q >= ranked.get("application/json", 0.0) else None
