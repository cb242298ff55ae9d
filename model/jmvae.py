"""JMVAE and JMVAE-kl (Suzuki, Nakayama & Matsuo, 2016): the model, its inference paths and its objectives."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .distributions import LOG_2PI, DiagGaussian
from .networks import AttributeDecoder, AttributeEncoder, ImageDecoder, ImageEncoder, JointEncoder
from .preprocess import reframe

# How a posterior is inferred when one modality is missing: "kl" uses the unimodal encoder q(z|x) or q(z|w)
# trained by JMVAE-kl's extra terms; "zero" feeds zeros for the missing input to the joint encoder (JMVAE-zero).
InferenceMode = Literal["kl", "zero"]
# The crop sizes, relative to the face's own crop, that `attribute_probabilities` averages over (each mirrored too).
ATTRIBUTE_VIEW_ZOOMS = (0.95, 1.0, 1.05)
# ObjectiveTerms.as_tensor's entries, by the metric names of training/metrics.py.
TERM_NAMES = ("loss", "log_px", "log_pw", "kl_prior", "kl_image", "kl_attributes", "elbo")


@dataclass(frozen=True)
class ObjectiveTerms:
    """Per-example means over a batch, in nats. Log-likelihoods sum over every pixel value (3·S·S) and every
    attribute, not averaged per channel as in the paper's code."""

    loss: torch.Tensor  # what the optimiser minimises: −(Eq. 2 with the warm-up weight β on the prior KL)
    log_px: torch.Tensor  # E_q(z|x,w)[log p(x|z)], one sample
    log_pw: torch.Tensor  # E_q(z|x,w)[log p(w|z)], one sample
    kl_prior: torch.Tensor  # KL(q(z|x,w) ‖ p(z))
    kl_image: torch.Tensor  # KL(q(z|x,w) ‖ q(z|x))
    kl_attributes: torch.Tensor  # KL(q(z|x,w) ‖ q(z|w))

    @property
    def elbo(self) -> torch.Tensor:
        """Eq. 1, the lower bound on log p(x, w), without warm-up."""
        return self.log_px + self.log_pw - self.kl_prior

    def as_tensor(self) -> torch.Tensor:
        """(len(TERM_NAMES),) float32 on the terms' device, detached: summed over steps there, it is read back to the
        host once per log point instead of once per term and step (each read is a GPU sync)."""
        terms = [getattr(self, name) for name in TERM_NAMES[:-1]] + [self.elbo]
        return torch.stack([t.detach().float() for t in terms])

    def as_floats(self) -> dict[str, float]:
        """The terms by the metric names of training/metrics.py (one read back to the host)."""
        return dict(zip(TERM_NAMES, self.as_tensor().tolist()))


class ImageLikelihood(nn.Module):
    """The Gaussian p(x|z) on pixels in [0, 1], with a fixed σ or one learned per pixel value (bounded below)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.min_log_sigma = math.log(config.min_image_sigma)
        log_sigma = torch.full((3, config.image_size, config.image_size), math.log(config.image_sigma))
        if config.image_likelihood == "gaussian-learned":
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma, persistent=False)

    def forward(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over the 3·S·S pixel values; mean broadcasts against x over leading dims."""
        log_sigma = self.log_sigma.float().clamp(min=self.min_log_sigma)
        z2 = ((x.float() - mean.float()) * torch.exp(-log_sigma)) ** 2
        return -0.5 * (LOG_2PI + 2.0 * log_sigma + z2).flatten(-3).sum(-1)


class JMVAE(nn.Module):
    """Joint encoder q(z|x,w), unimodal encoders q(z|x) and q(z|w), decoders p(x|z) and p(w|z), prior N(0, I).

    Images enter as (N, 3, S, S) floats in [0, 1]; attributes as (N, A) floats in CelebA's coding
    (−1 absent, 1 present, 0 unknown/missing).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.joint_encoder = JointEncoder(config)
        self.image_encoder = ImageEncoder(config)
        self.attribute_encoder = AttributeEncoder(config)
        self.image_decoder = ImageDecoder(config)
        self.attribute_decoder = AttributeDecoder(config)
        self.image_likelihood = ImageLikelihood(config)

    # Inference -------------------------------------------------------------------------------------------
    def q_joint(self, x: torch.Tensor, w: torch.Tensor) -> DiagGaussian:
        return self.joint_encoder(x, w)

    def q_image(self, x: torch.Tensor) -> DiagGaussian:
        return self.image_encoder(x)

    def q_attributes(self, w: torch.Tensor) -> DiagGaussian:
        return self.attribute_encoder(w)

    def infer(
        self, x: torch.Tensor | None = None, w: torch.Tensor | None = None, mode: InferenceMode = "kl"
    ) -> DiagGaussian:
        """The posterior given whichever modalities are present."""
        if x is None and w is None:
            raise ValueError("infer needs an image, attributes, or both")
        if x is not None and w is not None:
            return self.q_joint(x, w)
        if mode == "kl":
            return self.q_image(x) if x is not None else self.q_attributes(w)  # type: ignore[arg-type]
        if mode == "zero":
            if x is None:
                assert w is not None
                return self.q_joint(w.new_zeros(w.shape[0], 3, self.config.image_size, self.config.image_size), w)
            return self.q_joint(x, x.new_zeros(x.shape[0], self.config.n_attributes))
        raise ValueError(f"unknown inference mode {mode!r}; expected 'kl' or 'zero'")

    # Generation ------------------------------------------------------------------------------------------
    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) for z of shape (..., D): (..., 3, S, S) in (0, 1)."""
        lead = z.shape[:-1]
        return self.image_decoder(z.reshape(-1, z.shape[-1])).reshape(
            *lead, 3, self.config.image_size, self.config.image_size
        )

    def attribute_probabilities(self, x: torch.Tensor, mode: InferenceMode = "kl") -> torch.Tensor:
        """p(w_i = 1 | x) as the service answers it: p(w|z) at the mean of q(z|x) (mode "kl", or the joint encoder
        with zeros), averaged over six views of each face: its crop at 0.95, 1 and 1.05 times its size, each also
        mirrored (no CelebA attribute is left- or right-sided). The face detector's box for one face varies by a
        few percent between photos of it; averaging over that range steadies the answer (bench/photos.py: the range
        of P over copies of a val face at x0.75 to x6 and in a scene, 0.033 from one view for the default model)
        and adds to its ROC AUC (`jmvae eval`: attr_auc_kl 0.860, attr_auc_served 0.862 on val)."""
        n = len(x)
        zooms = torch.tensor(ATTRIBUTE_VIEW_ZOOMS, device=x.device, dtype=x.dtype).repeat_interleave(n)
        views = reframe(
            x.repeat(len(ATTRIBUTE_VIEW_ZOOMS), 1, 1, 1),
            zooms,
            torch.zeros((len(zooms), 2), device=x.device, dtype=x.dtype),
        )
        views = torch.cat([views, views.flip(-1)])
        probabilities = torch.sigmoid(self.decode_attributes(self.infer(x=views, mode=mode).mean).float())
        return probabilities.reshape(-1, n, self.config.n_attributes).mean(0)

    def decode_attributes(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(w|z) for z of shape (..., D): (..., A)."""
        lead = z.shape[:-1]
        return self.attribute_decoder(z.reshape(-1, z.shape[-1])).reshape(*lead, self.config.n_attributes)

    # Likelihoods (summed over all values, float32) --------------------------------------------------------
    def image_log_likelihood(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over the 3·S·S pixel values; mean broadcasts against x over leading dims."""
        return self.image_likelihood(x, mean)

    @staticmethod
    def attribute_log_likelihood(w: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(w|z) summed over attributes; w in CelebA coding, present means w > 0."""
        target, logits = torch.broadcast_tensors((w > 0).float(), logits.float())
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    # Training objective ----------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        alpha: float = 0.1,
        beta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> ObjectiveTerms:
        """The JMVAE-kl objective (Eq. 2) as a loss to minimise; α = 0 gives plain JMVAE (Eq. 1).

        β scales only KL(q(z|x,w) ‖ p(z)): the paper's warm-up of the prior term.
        """
        q = self.q_joint(x, w)
        z = q.rsample(generator=generator)
        log_px = self.image_log_likelihood(x, self.image_decoder(z))
        log_pw = self.attribute_log_likelihood(w, self.attribute_decoder(z))
        kl_prior = q.kl_standard_normal()
        if alpha > 0:
            kl_image = q.kl(self.q_image(x))
            kl_attributes = q.kl(self.q_attributes(w))
        else:  # the unimodal encoders are not part of Eq. 1; skipping them saves two encoder passes
            kl_image = kl_attributes = torch.zeros_like(kl_prior)
        loss = -(log_px + log_pw - beta * kl_prior - alpha * (kl_image + kl_attributes))
        return ObjectiveTerms(
            loss=loss.mean(),
            log_px=log_px.mean(),
            log_pw=log_pw.mean(),
            kl_prior=kl_prior.mean(),
            kl_image=kl_image.mean(),
            kl_attributes=kl_attributes.mean(),
        )
