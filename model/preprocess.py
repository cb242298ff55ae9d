"""The one place that turns a face photo into the model's input.

The training cache (CelebA) and the HTTP service both go through these functions (and `jmvae.model.faces`, which
finds the face), so an uploaded photo is cropped, resampled and scaled exactly as the training faces were.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Size of CelebA's img_align_celeba images, which `Preprocessing.aligned_box` is expressed in.
ALIGNED_IMAGE_SIZE: tuple[int, int] = (178, 218)

# What a transparent pixel becomes: white, because that is how browsers and image viewers show transparency,
# so the model sees the picture the uploader saw (and a cut-out portrait keeps a plain background).
TRANSPARENT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Antialiased one-step crop+resample; recorded implicitly by `Preprocessing` (changing it changes the pixels).
_RESAMPLE = Image.Resampling.LANCZOS
_RESAMPLE_SUPPORT = 3.0  # Lanczos-3 kernel radius in output pixels
# A box more than this many times the output's side is first reduced by an integer box filter to within it, then
# resampled by Lanczos (PIL's reducing_gap): a 1,200-pixel face box of a 12-megapixel photo costs 5 ms, not 50,
# and the result differs from the one-step Lanczos by 0.2-0.4 grey levels on average (at most 4) on a photo.
# Training's 131-pixel CelebA boxes are unaffected.
_REDUCING_GAP = 3.0

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

    def iou(self, other: CropBox) -> float:
        """Intersection over union of the two boxes' areas."""
        w = max(0.0, min(self.right, other.right) - max(self.left, other.left))
        h = max(0.0, min(self.bottom, other.bottom) - max(self.top, other.top))
        return w * h / (self.width * self.height + other.width * other.height - w * h)

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


# The fallback crop of an aligned CelebA image in which no face is found, and the crop of `crop = "aligned"`:
# the median of the detector's grown boxes on aligned CelebA images, so a miss is framed like a hit. Measured
# with `python -m bench.faces --data ../shared/datasets/celeba-subset` ("recall", FaceDetection's
# defaults, all 5,340 images of the subset: a face passed in 98.0%; median left 23.1, top 58.01, side 131.49;
# p10-p90 of the side 120.6-144.1).
CELEBA_ALIGNED_BOX = CropBox(left=23.1, top=58.01, width=131.49, height=131.49)


class FaceDetection(BaseModel):
    """How `jmvae.model.faces` finds a face: recorded in every checkpoint, so that a service applies exactly the
    crop its model was trained on (and refuses a model trained on another)."""

    model_config = _FROZEN

    detector: str = Field("opencv-haar-refined", description="the algorithm, versioned by name")
    cascade: str = Field("haarcascade_frontalface_alt2.xml", description="an OpenCV frontal-face cascade file")
    min_face: float = Field(
        0.125,
        gt=0,
        le=1,
        description="the smallest face searched for, as a fraction of the "
        "photo's shorter side: a smaller face is not the subject of a portrait",
    )
    search_window: int = Field(
        24,
        ge=20,
        description="pixels of the smallest face in the coarse search image: "
        "the photo is searched at the resolution this sets, whatever its size",
    )
    scale_factor: float = Field(1.2, gt=1, description="coarse search: pyramid step")
    min_neighbors: int = Field(3, ge=0)
    refine_size: int = Field(96, ge=24, description="each candidate is searched again with its face at this size")
    refine_scale_factor: float = Field(1.05, gt=1)
    # Below the weakest true face that bench/faces.py finds in its scenes (55.2), so that it drops only candidates
    # weaker than any face seen on the subset. Level weights are on each cascade's own scale.
    min_confidence: float = Field(54.75, description="the refined detection's level weight must reach this")
    box_scale: float = Field(
        1.3, gt=0, description="the face box is grown by this about its centre (the paper's framing)"
    )


class Preprocessing(BaseModel):
    """How faces were turned into model input; recorded in every checkpoint so the service can repeat it."""

    model_config = _FROZEN

    image_size: int = Field(default=64, ge=1)
    crop: Literal["detector", "aligned"] = Field(
        "detector",
        description="detector: around each photo's own face detection, as the service crops uploads; "
        "aligned: the fixed `aligned_box` of an aligned CelebA image",
    )
    detection: FaceDetection = FaceDetection()
    aligned_box: CropBox = CELEBA_ALIGNED_BOX  # in img_align_celeba's 178x218 pixel coordinates
    normalisation: Literal["unit"] = "unit"  # pixels / 255 -> [0, 1]

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        # Checkpoints of jmvae <= 0.1 cropped every training image with the fixed aligned box and recorded only the
        # box scale of the detector that box was measured with.
        if isinstance(data, dict) and "detector_box_scale" in data and "crop" not in data:
            data = {k: v for k, v in data.items() if k != "detector_box_scale"}
            data["crop"] = "aligned"
        return data

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
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        region = image.crop((x0, y0, x1, y1))
    else:
        # The part of the region inside the image, at least one pixel so a box wholly outside still has an edge.
        cx0, cy0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
        cx1, cy1 = max(min(x1, width), cx0 + 1), max(min(y1, height), cy0 + 1)
        inside = np.asarray(image.crop((cx0, cy0, cx1, cy1)))
        # Edge padding by index clamping: each region pixel takes the nearest inside pixel.
        rows = np.clip(np.arange(y0, y1), cy0, cy1 - 1) - cy0
        cols = np.clip(np.arange(x0, x1), cx0, cx1 - 1) - cx0
        region = Image.fromarray(np.ascontiguousarray(inside[rows[:, None], cols[None, :]]), mode="RGB")
    local_box = (box.left - x0, box.top - y0, box.right - x0, box.bottom - y0)
    resized = region.resize((size, size), resample=_RESAMPLE, box=local_box, reducing_gap=_REDUCING_GAP)
    return np.asarray(resized, dtype=np.uint8).copy()


def reframe(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, angle: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalised faces (N, 3, S, S) as if each crop box had been drawn `scale` (N,) times as large about its
    centre, turned by `angle` (N,) radians and moved by `shift` (N, 2) of its side (x, y); bilinear, edges
    repeated as `crop_face` pads."""
    theta = torch.zeros((len(x), 2, 3), device=x.device, dtype=x.dtype)
    if angle is None:
        theta[:, 0, 0] = theta[:, 1, 1] = scale
    else:
        cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, :, 2] = 2 * shift  # the grid spans [-1, 1]: 2 units per side
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
