"""The paper's GAN combination (after VAE-GAN, Larsen et al. 2016): a discriminator that tells training faces from
decoded ones, whose verdict the decoder learns to overturn, for sharper faces than a Gaussian p(x|z) gives alone.

The JMVAE objective and its pixel likelihood stay as they are, so the test bounds keep their meaning; the
adversarial term is added to the decoder's loss only. The fakes are the faces the service shows: decodes of
z ~ q(z|w) (attributes → face) and of z ~ p(z).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .jmvae import JMVAE
from .networks import ConvFeatures


class Discriminator(nn.Module):
    """x (N, 3, S, S) in [0, 1] → one logit per image: the encoder's conv tower and dense layer, and a linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.features = ConvFeatures(config)
        self.head = nn.Linear(config.dense_units, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).float().squeeze(-1)


@dataclass(frozen=True)
class AdversarialTerms:
    generator_loss: torch.Tensor  # non-saturating: −log D(fake), mean over fakes
    fakes: torch.Tensor  # the decoded faces, for the discriminator's step (detach before use)


def generated_faces(model: JMVAE, w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One decode of z ~ q(z|w) and one of z ~ p(z) per example: (2N, 3, S, S)."""
    z_attributes = model.q_attributes(w).rsample(generator=generator)
    z_prior = torch.randn(z_attributes.shape, generator=generator, device=w.device, dtype=z_attributes.dtype)
    return model.decode_image(torch.cat([z_attributes, z_prior]))


def generator_terms(
    model: JMVAE, discriminator: Discriminator, w: torch.Tensor, generator: torch.Generator | None = None
) -> AdversarialTerms:
    fakes = generated_faces(model, w, generator)
    return AdversarialTerms(F.softplus(-discriminator(fakes)).mean(), fakes)


def discriminator_loss(
    discriminator: Discriminator, real: torch.Tensor, fakes: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Binary cross-entropy of real vs decoded faces, the two classes weighted equally; with what D believes, as
    detached 0-dim tensors on the device (the trainer reads them back at its log points only)."""
    real_logits, fake_logits = discriminator(real), discriminator(fakes)
    loss = 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())
    return loss, {
        "d_loss": loss.detach(),
        "d_real": torch.sigmoid(real_logits).mean().detach(),
        "d_fake": torch.sigmoid(fake_logits).mean().detach(),
    }
