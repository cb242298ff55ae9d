"""The one place that turns a face photo into the model's input.

The training cache (CelebA) and the HTTP service both go through these functions, so an uploaded photo is
cropped, resampled and scaled exactly as the training faces were.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

# Size of CelebA's img_align_celeba images, which `Preprocessing.aligned_box` is expressed in.
ALIGNED_IMAGE_SIZE: tuple[int, int] = (178, 218)

# What a transparent pixel becomes: white, because that is how browsers and image viewers show transparency,
# so the model sees the picture the uploader saw (and a cut-out portrait keeps a plain background).
TRANSPARENT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Antialiased one-step crop+resample; recorded implicitly by `Preprocessing` (changing it changes the pixels).
_RESAMPLE = Image.Resampling.LANCZOS
_RESAMPLE_SUPPORT = 3.0  # Lanczos-3 kernel radius in output pixels

_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class CropBox(BaseModel):
    """A crop in pixel coordinates of the source image; floats allowed, may extend past the image."""

    model_config = _FROZEN

    left: float
    top: float
    width: float = Field(gt=0)
    height: float = Field(gt=0)

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def scaled(self, factor: float) -> CropBox:
        """The box grown (factor > 1) or shrunk about its centre."""
        if not factor > 0 or not math.isfinite(factor):
            raise ValueError(f"scale factor must be finite and > 0, got {factor}")
        width, height = self.width * factor, self.height * factor
        return CropBox(
            left=self.left + (self.width - width) / 2,
            top=self.top + (self.height - height) / 2,
            width=width,
            height=height,
        )


# Measured, not guessed: OpenCV 4.12 haarcascade_frontalface_default.xml, detectMultiScale(gray,
# scaleFactor=1.1, minNeighbors=5, minSize=(40, 40)) on all 5,340 images of the CelebA subset (178x218
# img_align_celeba); a face was found in 5,143 (96.3%), the largest detection taken where there were several
# (99 images). Each box was grown x1.3 about its centre; the medians of the grown boxes are left 21.4,
# top 55.85, side 135.2 (the cascade's boxes are square); centre (89.0, 123.45), p10-p90 of the side 120.9-150.8.
CELEBA_ALIGNED_BOX = CropBox(left=21.4, top=55.85, width=135.2, height=135.2)


class Preprocessing(BaseModel):
    """How faces were turned into model input; recorded in every checkpoint so the service can repeat it."""

    model_config = _FROZEN

    image_size: int = Field(default=64, ge=1)
    aligned_box: CropBox = CELEBA_ALIGNED_BOX  # in img_align_celeba's 178x218 pixel coordinates
    detector_box_scale: float = Field(default=1.3, gt=0)  # a Haar-cascade face box is grown by this
    normalisation: Literal["unit"] = "unit"  # pixels / 255 -> [0, 1]

    def aligned_box_for(self, width: int, height: int) -> CropBox:
        """The aligned box for an aligned-CelebA image resized to width x height (each axis scaled alone,
        so a non-uniformly resized copy is cropped to the same face region)."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        sx, sy = width / ALIGNED_IMAGE_SIZE[0], height / ALIGNED_IMAGE_SIZE[1]
        box = self.aligned_box
        return CropBox(left=box.left * sx, top=box.top * sy, width=box.width * sx, height=box.height * sy)


def open_image(source: str | Path | IO[bytes]) -> Image.Image:
    """Decode an image file fully, turned upright by its EXIF orientation (phones store photos sideways and
    say so there) and converted to RGB. Raises what PIL raises for unreadable or truncated files."""
    with Image.open(source) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited over `TRANSPARENT_BACKGROUND`."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        # PIL's own conversion clips these to 0..255 (a 16-bit photo turns white); integer modes hold
        # 16-bit samples (16-bit PNG/TIFF), so scale to 8 bits; float data has no standard range: clip as PIL.
        values = np.asarray(image, dtype=np.float64)
        if mode != "F":
            values = values / 257.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "La":
        image, mode = image.convert("LA"), "LA"
    if mode in ("LA", "PA", "RGBA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def crop_face(image: Image.Image, box: CropBox, size: int) -> np.ndarray:
    """Crop `box` out of `image` and resample it to (size, size, 3) uint8 RGB in one antialiased step.

    Where the box (or the resampling kernel around it) extends past the image, the image is padded by
    repeating its edge pixels: no hard border the model never saw, and no mirrored second chin or eye as
    reflection would make. Edge pixels are computed the same way whether the box is inside or not, so a box's
    result does not depend on how much of the photo lies around it."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    image = to_rgb(image)
    width, height = image.size
    # The source region the kernel reads: the box plus the kernel's reach, on the integer pixel grid.
    margin = math.ceil(_RESAMPLE_SUPPORT * max(box.width, box.height) / size) + 1
    x0, y0 = math.floor(box.left) - margin, math.floor(box.top) - margin
    x1, y1 = math.ceil(box.right) + margin, math.ceil(box.bottom) + margin
    # The part of the region inside the image, at least one pixel so a box wholly outside still has an edge.
    cx0, cy0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    cx1, cy1 = max(min(x1, width), cx0 + 1), max(min(y1, height), cy0 + 1)
    inside = np.asarray(image.crop((cx0, cy0, cx1, cy1)))
    # Edge padding by index clamping: each region pixel takes the nearest inside pixel.
    rows = np.clip(np.arange(y0, y1), cy0, cy1 - 1) - cy0
    cols = np.clip(np.arange(x0, x1), cx0, cx1 - 1) - cx0
    region = Image.fromarray(np.ascontiguousarray(inside[rows[:, None], cols[None, :]]), mode="RGB")
    local_box = (box.left - x0, box.top - y0, box.right - x0, box.bottom - y0)
    return np.asarray(region.resize((size, size), resample=_RESAMPLE, box=local_box), dtype=np.uint8).copy()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) or (S, S, 3) RGB -> float32 (N, 3, S, S) or (3, S, S) in [0, 1], on the same device."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {images.dtype}")
    if images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"expected (N, S, S, 3) or (S, S, 3), got {tuple(images.shape)}")
    return images.movedim(-1, -3).to(torch.float32).div_(255.0).contiguous()


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """float (N, 3, S, S) or (3, S, S) -> uint8 (N, S, S, 3) or (S, S, 3), clipped to [0, 1] and rounded."""
    if not x.is_floating_point():
        raise TypeError(f"expected a float tensor, got {x.dtype}")
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected (N, 3, S, S) or (3, S, S), got {tuple(x.shape)}")
    pixels = torch.nan_to_num(x.detach().to(torch.float32), nan=0.0).mul(255.0).round_().clamp_(0, 255)
    return pixels.to(torch.uint8).movedim(-3, -1).contiguous()
