"""Faces out over HTTP: base64 PNGs in JSON."""

from __future__ import annotations

import base64

import numpy as np

from jmvae.model.render import png_bytes


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")
