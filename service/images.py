"""Decoding untrusted image uploads into upright RGB pictures, or a precise refusal.

Nothing here calls `PIL.Image.open`, which tries every format PIL knows and then applies PIL's process-global
decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`), warning or raising by a number that is not ours. Instead
the format is recognised by its signature, only the JPEG, PNG and WebP parsers ever see the bytes, and the
canvas size is checked against the caller's `max_pixels` from the header, before any pixel memory exists.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from types import MappingProxyType
from typing import Final

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from jmvae.model.preprocess import to_rgb

# JpegImageFile rather than PIL's JPEG factory: a multi-picture JPEG (MPO: phones' depth maps, HDR gain maps,
# stereo pairs) then decodes as its primary picture, not as a "multi-frame" image to refuse.
_PARSERS: Final[MappingProxyType[str, Callable[[io.BytesIO], ImageFile.ImageFile]]] = MappingProxyType(
    {
        "JPEG": JpegImagePlugin.JpegImageFile,
        "PNG": PngImagePlugin.PngImageFile,
        "WEBP": WebPImagePlugin.WebPImageFile,
    }
)
ALLOWED_FORMATS: Final[frozenset[str]] = frozenset(_PARSERS)
_ACCEPTED = "JPEG, PNG or WebP"


class ImageRejected(Exception):
    """An upload that is not a usable picture; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, max_pixels: int, max_bytes: int | None = None) -> Image.Image:
    """Decode an uploaded JPEG, PNG or WebP fully into an upright (EXIF orientation applied) RGB image.

    Raises `ImageRejected` for anything else: 413 for too many bytes or pixels (either way the remedy is
    to send a smaller picture, which is what 413 asks for; a decompression bomb is refused by its header,
    before its canvas is allocated), 415 for data that is not a JPEG, PNG or WebP, 422 for an empty upload,
    an animated or multi-frame image, and truncated, corrupt or otherwise undecodable data."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Process-global; with it set PIL returns half-grey pictures of truncated files. A deployment bug,
        # so a 500 rather than a blame on the uploader.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated uploads would be accepted")
    if not data:
        raise ImageRejected(422, "the upload is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageRejected(413, f"the upload is {len(data):,} bytes; at most {max_bytes:,} are accepted")
    kind = _sniff(data)
    if kind is None:
        other = _other_format(data)
        if other is None:
            raise ImageRejected(415, f"not a recognised image; send {_ACCEPTED}")
        raise ImageRejected(415, f"{other} images are not accepted; send {_ACCEPTED}")
    try:
        return _decode(kind, data, max_pixels)
    except ImageRejected:
        raise
    except Exception as exc:  # whatever a parser or decoder raises on hostile data is the data's fault
        raise ImageRejected(422, f"the {kind} image is corrupt or truncated: {_one_line(exc)}") from exc


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _other_format(data: bytes) -> str | None:
    """The name of a format PIL knows, by its signature test alone: no parser runs on refused data."""
    Image.init()
    prefix = data[:16]  # what Image.open gives the signature tests
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(prefix) is True:  # a str result is only a hint
                return name
        except Exception:
            continue
    return None


def _decode(kind: str, data: bytes, max_pixels: int) -> Image.Image:
    if kind == "WEBP":
        # PIL's WebP parser creates the decoder, and with it the canvas, while reading the header.
        _check_pixels(_webp_canvas_size(data), max_pixels)
    with _PARSERS[kind](io.BytesIO(data)) as image:  # reads the header only
        _check_pixels(image.size, max_pixels)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ImageRejected(
                422,
                f"animated or multi-frame images are not accepted (this {kind} has "
                f"{frames} frames); send a still picture",
            )
        # Decoding checks the data: a short read fails (LOAD_TRUNCATED_IMAGES is off) and PNG's zlib stream
        # ends in a checksum over all pixel rows, so a flipped bit anywhere in them fails too.
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))  # as `preprocess.open_image` does, minus Image.open


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageRejected(422, f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            413,
            f"the image is {width}x{height} ({width * height:,} pixels); at most {max_pixels:,} pixels are accepted",
        )


def _webp_canvas_size(data: bytes) -> tuple[int, int]:
    """Width and height from the first chunk of a WebP file (RIFF header, then VP8X, VP8L or 'VP8 ')."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit canvas width-1 and height-1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14-bit width-1, height-1
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    raise ImageRejected(422, "the WEBP image is corrupt or truncated: unreadable header")


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
