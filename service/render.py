"""Faces out: PNG bytes, base64 strings and grids."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def grid(images: list[np.ndarray], columns: int = 8, gap: int = 2) -> np.ndarray:
    """Equal-sized (S, S, 3) images row-major on a white background, `gap` pixels apart."""
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    size = images[0].shape[0]
    out = np.full((rows * size + (rows - 1) * gap, columns * size + (columns - 1) * gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (size + gap) : r * (size + gap) + size, c * (size + gap) : c * (size + gap) + size] = image
    return out
