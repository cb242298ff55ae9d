"""Training-time augmentation of a batch of normalised faces, drawn from the step's seeded generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from jmvae.model.preprocess import reframe


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    hflip: bool,
    shift: int,
    jitter_scale: float = 0.0,
    jitter_shift: float = 0.0,
    rotate: float = 0.0,
    colour: float = 0.0,
) -> torch.Tensor:
    """Mirror a random half of the batch (no CelebA attribute is left- or right-sided, so labels stay true) and
    translate each face by up to `shift` pixels each way, edges repeated: the service crops uploads around
    their own face detection, whose box lands a few pixels off the fixed crop of the aligned training images.
    Then `jitter`: each face re-framed as the detector's box varies for one face between photos of it, turned by
    up to `rotate` degrees (heads the cascade still finds tilt by up to about 15°), and `recolour`ed."""
    if hflip:
        flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if shift > 0:
        n, _, height, width = x.shape
        offsets = torch.randint(0, 2 * shift + 1, (2, n), generator=generator, device=x.device)
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (n, height)
        cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # (n, width)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    if jitter_scale > 0 or jitter_shift > 0 or rotate > 0:
        x = jitter(x, generator, jitter_scale, jitter_shift, rotate)
    if colour > 0:
        x = recolour(x, generator, colour)
    return x.contiguous(memory_format=torch.channels_last)


def jitter(
    x: torch.Tensor, generator: torch.Generator, scale: float, shift: float, rotate: float = 0.0
) -> torch.Tensor:
    """Each face as if its crop box had been drawn larger or smaller by a factor e^u, u ~ U(-scale, scale), and
    moved by up to `shift` of its side along each axis (bilinear resampling, edges repeated as `crop_face` pads):
    the variation of the detector's box for one face between photos of it (bench/faces.py measures it); and
    turned by an angle ~ U(-rotate, rotate) degrees."""
    draws = torch.rand((3, len(x)), generator=generator, device=x.device) * 2 - 1
    angle = None
    if rotate > 0:
        angle = (torch.rand(len(x), generator=generator, device=x.device) * 2 - 1) * math.radians(rotate)
    return reframe(x, torch.exp(draws[0] * scale), draws[1:].T * shift, angle)


# ITU-R BT.601 luma, the weights PIL's convert("L") uses: a grey-scale photo's pixel is this of its colour one.
_LUMA = (0.299, 0.587, 0.114)


def recolour(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Each face's brightness, contrast and saturation scaled by independent factors e^u, u ~ U(-strength,
    strength), clipped to [0, 1]: photos differ in exposure and colour far more than CelebA's do, and an
    answer should not move with them (issue 14: a grey-scale copy of a face flipped its P(Male))."""
    factors = torch.exp((torch.rand((3, len(x), 1, 1, 1), generator=generator, device=x.device) * 2 - 1) * strength)
    x = x * factors[0]
    luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype)[None, :, None, None]
    mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = mean + (x - mean) * factors[1]
    grey = (x * luma).sum(1, keepdim=True)
    return (grey + (x - grey) * factors[2]).clamp_(0.0, 1.0)
