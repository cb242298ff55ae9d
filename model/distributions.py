"""Diagonal Gaussians and the closed-form KL terms of the JMVAE objectives."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class DiagGaussian:
    """N(mean, diag(exp(logvar))) over the last dimension."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample(s): shape of mean, or (n, *mean.shape) when n is given."""
        shape = self.mean.shape if n is None else (n, *self.mean.shape)
        eps = torch.randn(shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log density summed over the latent dimension; z broadcasts against mean."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mean) ** 2 * torch.exp(-self.logvar)).sum(-1)

    def kl(self, other: DiagGaussian) -> torch.Tensor:
        """KL(self ‖ other), summed over the latent dimension."""
        return 0.5 * (
            other.logvar
            - self.logvar
            + (torch.exp(self.logvar) + (self.mean - other.mean) ** 2) * torch.exp(-other.logvar)
            - 1.0
        ).sum(-1)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(self ‖ N(0, I)), summed over the latent dimension."""
        return 0.5 * (torch.exp(self.logvar) + self.mean**2 - 1.0 - self.logvar).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)
