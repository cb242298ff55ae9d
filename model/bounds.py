"""Importance-weighted test bounds of the paper's appendix (Eq. 3–5).

Every log-likelihood sums over all 3·S·S pixel values and all attributes (the paper's code averaged the image
term over the three channels, so its Table 1 numbers are on another scale). Samples are drawn in chunks and
combined with a running log-sum-exp, so k = 1000 needs the memory of one chunk, not of k decoder passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .baselines import CVAE, VAE
from .distributions import DiagGaussian, standard_normal_log_prob
from .jmvae import JMVAE

# Decoder passes per chunk (samples × batch): bounds the activation memory of one chunk.
DEFAULT_CHUNK = 2048


@dataclass(frozen=True)
class Bounds:
    """Per-example estimates, shape (N,), in nats."""

    log_px_multiple: torch.Tensor  # log p(x), proposal q(z|x,w)
    log_px_single: torch.Tensor  # log p(x), proposal q(z|x)
    log_pxw: torch.Tensor  # log p(x, w), proposal q(z|x,w)
    log_pw: torch.Tensor  # log p(w), N_w samples from the prior (not reported: metric log_pw is ObjectiveTerms')
    log_px_given_w: torch.Tensor  # log p(x|w) = log p(x, w) − log p(w) (Eq. 4)


def _iw_logmeanexp(k: int, chunk: int, draw: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """log (1/k Σ_i exp(l_i)) where draw(c) returns c new log-weights, shape (c, N)."""
    total: torch.Tensor | None = None
    done = 0
    while done < k:
        c = min(chunk, k - done)
        part = torch.logsumexp(draw(c), dim=0)
        total = part if total is None else torch.logaddexp(total, part)
        done += c
    assert total is not None
    return total - math.log(k)


@torch.inference_mode()
def importance_weighted_bounds(
    model: JMVAE,
    x: torch.Tensor,
    w: torch.Tensor,
    k: int = 10,
    n_w: int = 10,
    chunk: int = DEFAULT_CHUNK,
    generator: torch.Generator | None = None,
) -> Bounds:
    """The appendix's test bounds for one batch (the paper's code used k = 10, N_w = 10).

    x: (N, 3, S, S) in [0, 1]; w: (N, A) in CelebA coding. The model should be in eval mode.
    """
    if k < 1 or n_w < 1:
        raise ValueError("k and n_w must be at least 1")
    samples_per_chunk = max(1, chunk // x.shape[0])

    def weights(q: DiagGaussian, with_w: bool) -> Callable[[int], torch.Tensor]:
        def draw(c: int) -> torch.Tensor:
            z = q.rsample(c, generator=generator)  # (c, N, D)
            log_w = model.image_log_likelihood(x, model.decode_image(z)) + standard_normal_log_prob(z) - q.log_prob(z)
            if with_w:
                log_w = log_w + model.attribute_log_likelihood(w, model.decode_attributes(z))
            return log_w

        return draw

    def prior_attribute_weights(c: int) -> torch.Tensor:
        z = torch.randn((c, model.config.latent_dim), generator=generator, device=x.device)
        logits = model.decode_attributes(z)  # (c, A), shared by the whole batch
        return model.attribute_log_likelihood(w.unsqueeze(0), logits.unsqueeze(1))  # (c, N)

    q_joint = model.q_joint(x, w)
    q_image = model.q_image(x)
    log_px_multiple = _iw_logmeanexp(k, samples_per_chunk, weights(q_joint, with_w=False))
    log_px_single = _iw_logmeanexp(k, samples_per_chunk, weights(q_image, with_w=False))
    log_pxw = _iw_logmeanexp(k, samples_per_chunk, weights(q_joint, with_w=True))
    log_pw = _iw_logmeanexp(n_w, max(1, chunk), prior_attribute_weights)
    return Bounds(log_px_multiple, log_px_single, log_pxw, log_pw, log_pxw - log_pw)


@torch.inference_mode()
def vae_log_px(
    model: VAE, x: torch.Tensor, k: int = 10, chunk: int = DEFAULT_CHUNK, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The VAE baseline's importance-weighted log p(x) with q(z|x), shape (N,)."""
    q = model.image_encoder(x)

    def draw(c: int) -> torch.Tensor:
        z = q.rsample(c, generator=generator)
        mean = model.image_decoder(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], *x.shape[1:])
        return model.image_likelihood(x, mean) + standard_normal_log_prob(z) - q.log_prob(z)

    return _iw_logmeanexp(k, max(1, chunk // x.shape[0]), draw)


@torch.inference_mode()
def cvae_log_px_given_w(
    model: CVAE,
    x: torch.Tensor,
    w: torch.Tensor,
    k: int = 10,
    chunk: int = DEFAULT_CHUNK,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The CVAE baseline's importance-weighted log p(x|w) with q(z|x,w), shape (N,)."""
    q = model.encoder(x, w)

    def draw(c: int) -> torch.Tensor:
        z = q.rsample(c, generator=generator)
        return model.image_likelihood(x, model.decode_image(z, w)) + standard_normal_log_prob(z) - q.log_prob(z)

    return _iw_logmeanexp(k, max(1, chunk // x.shape[0]), draw)
