"""Faces out as pictures: grids (used by the service and by evaluation reports)."""

from __future__ import annotations

import math

import numpy as np


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
