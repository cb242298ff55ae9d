"""The paper's Table 1 baselines on the same networks as JMVAE: a VAE of images, and a CVAE of images given
attributes; the attribute classifier that scores generated faces; and `create_model`, which builds whichever a
config names."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .jmvae import JMVAE, ImageLikelihood, ObjectiveTerms
from .networks import ConvFeatures, ImageDecoder, ImageEncoder, JointEncoder


def _image_elbo_terms(log_px: torch.Tensor, kl: torch.Tensor, beta: float) -> ObjectiveTerms:
    """A baseline's −ELBO in JMVAE's terms: no attribute likelihood and no unimodal KL terms."""
    zero = torch.zeros((), device=kl.device)
    return ObjectiveTerms((-(log_px - beta * kl)).mean(), log_px.mean(), zero, kl.mean(), zero, zero)


class VAE(nn.Module):
    """q(z|x), p(x|z), p(z) = N(0, I): a model of images alone."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.image_decoder = ImageDecoder(config)
        self.image_likelihood = ImageLikelihood(config)

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        alpha: float = 0.0,
        beta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> ObjectiveTerms:
        """−ELBO of log p(x), β on the KL; w and α are accepted for a common trainer interface and ignored."""
        q = self.image_encoder(x)
        log_px = self.image_likelihood(x, self.image_decoder(q.rsample(generator=generator)))
        return _image_elbo_terms(log_px, q.kl_standard_normal(), beta)


class CVAE(nn.Module):
    """q(z|x,w), p(x|z,w), p(z) = N(0, I): a model of images given attributes."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = JointEncoder(config)
        self.image_decoder = ImageDecoder(config, extra_inputs=config.n_attributes)
        self.image_likelihood = ImageLikelihood(config)

    def decode_image(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z,w) for z of shape (..., N, D) and w of shape (N, A)."""
        lead = z.shape[:-1]
        zw = torch.cat([z, w.expand(*lead, w.shape[-1]).to(z.dtype)], dim=-1)
        size = self.config.image_size
        return self.image_decoder(zw.reshape(-1, zw.shape[-1])).reshape(*lead, 3, size, size)

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        alpha: float = 0.0,
        beta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> ObjectiveTerms:
        """−ELBO of log p(x|w), β on the KL; α is accepted for a common trainer interface and ignored."""
        q = self.encoder(x, w)
        log_px = self.image_likelihood(x, self.decode_image(q.rsample(generator=generator), w))
        return _image_elbo_terms(log_px, q.kl_standard_normal(), beta)


class AttributeClassifier(nn.Module):
    """p(w|x) directly, on JMVAE's conv tower: the judge of whether generated faces show their attributes."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.features = ConvFeatures(config)
        self.head = nn.Linear(config.dense_units, config.n_attributes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).float()

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        alpha: float = 0.0,
        beta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> ObjectiveTerms:
        """−log p(w|x) as the loss, reported as log_pw; the other terms are zero (no latent variable)."""
        log_pw = JMVAE.attribute_log_likelihood(w, self.logits(x))
        zero = torch.zeros((), device=x.device)
        return ObjectiveTerms(-log_pw.mean(), zero, log_pw.mean(), zero, zero, zero)


Model = JMVAE | VAE | CVAE | AttributeClassifier


def create_model(config: ModelConfig) -> Model:
    kinds: dict[str, type[Model]] = {"jmvae": JMVAE, "vae": VAE, "cvae": CVAE, "classifier": AttributeClassifier}
    return kinds[config.kind](config)
