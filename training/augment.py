"""Training-time augmentation of a batch of normalised faces, drawn from the step's seeded generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, generator: torch.Generator, hflip: bool, shift: int) -> torch.Tensor:
    """Mirror a random half of the batch (no CelebA attribute is left- or right-sided, so labels stay true) and
    translate each face by up to `shift` pixels each way, edges repeated: the service crops uploads around
    their own face detection, whose box lands a few pixels off the fixed crop of the aligned training images."""
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
    return x.contiguous(memory_format=torch.channels_last)
