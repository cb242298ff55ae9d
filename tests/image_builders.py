"""Hostile and unusual image files, built in memory, for the decoder's unit tests and the HTTP tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def black_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of zeros, compressed row by row: the full canvas never exists in memory."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose frame header claims `width`×`height` pixels."""
    data = bytearray(encode(noise(32, 24), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_with_alpha() -> bytes:
    """A lossy 37×23 WebP with alpha, which needs the extended (VP8X) format."""
    rgba = noise(37, 23).convert("RGBA")
    rgba.putalpha(128)
    return encode(rgba, "WEBP", quality=80)


def webp_claiming(width: int, height: int) -> bytes:
    """A small extended WebP whose VP8X chunk claims a `width`×`height` canvas."""
    data = bytearray(webp_with_alpha())
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def animated(fmt: str, width: int = 30, height: int = 20) -> bytes:
    """Two frames of different noise."""
    first, second = noise(width, height, seed=1), noise(width, height, seed=2)
    return encode(first, fmt, save_all=True, append_images=[second], duration=100)


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """A JPEG of `upright` stored turned counter-clockwise, with EXIF orientation 6 (turn it clockwise to view)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
