"""The building blocks of the paper's CelebA networks: convolutional image towers and dense attribute towers."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .config import ModelConfig
from .distributions import DiagGaussian

M = TypeVar("M", bound=nn.Module)

# Keeps exp(logvar) finite in bf16/fp32 early in training, when heads can output large values.
LOGVAR_RANGE = (-12.0, 8.0)


def _dense(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True))


class ConvFeatures(nn.Module):
    """x (N, 3, S, S) in [0, 1] → (N, dense_units): the conv stack plus the dense layer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        n_in = 3
        for i, n_out in enumerate(config.conv_channels):
            layers.append(nn.Conv2d(n_in, n_out, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:  # the paper's network has no batch norm on the first convolution
                layers.append(nn.BatchNorm2d(n_out))
            layers.append(nn.ReLU(inplace=True))
            n_in = n_out
        layers.append(nn.Flatten())
        self.conv = nn.Sequential(*layers)
        self.dense = _dense(n_in * config.feature_size**2, config.dense_units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.conv(x))


class GaussianHead(nn.Module):
    """Features → diagonal Gaussian over z."""

    def __init__(self, n_in: int, latent_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, 2 * latent_dim)

    def forward(self, h: torch.Tensor) -> DiagGaussian:
        mean, logvar = self.linear(h).float().chunk(2, dim=-1)
        return DiagGaussian(mean, logvar.clamp(*LOGVAR_RANGE))


class ImageEncoder(nn.Module):
    """q(z|x)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.features = ConvFeatures(config)
        self.head = GaussianHead(config.dense_units, config.latent_dim)

    def forward(self, x: torch.Tensor) -> DiagGaussian:
        return self.head(self.features(x))


class AttributeEncoder(nn.Module):
    """q(z|w); w in CelebA's coding (-1 absent, 1 present; larger magnitudes emphasise, 0 is unknown)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _dense(config.n_attributes, config.attribute_units),
            _dense(config.attribute_units, config.attribute_units),
        )
        self.head = GaussianHead(config.attribute_units, config.latent_dim)

    def forward(self, w: torch.Tensor) -> DiagGaussian:
        return self.head(self.features(w))


class JointEncoder(nn.Module):
    """q(z|x,w): its own conv stack, concatenated with a dense attribute branch."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.image = ConvFeatures(config)
        self.attributes = _dense(config.n_attributes, config.attribute_units)
        self.merge = _dense(config.dense_units + config.attribute_units, config.dense_units)
        self.head = GaussianHead(config.dense_units, config.latent_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> DiagGaussian:
        h = torch.cat([self.image(x), self.attributes(w)], dim=-1)
        return self.head(self.merge(h))


class ImageDecoder(nn.Module):
    """z → mean of p(x|z), (N, 3, S, S) in (0, 1): the encoder's layers mirrored with transposed convolutions.
    `extra_inputs` widens the input for a conditional decoder p(x|z,w), which gets concat(z, w)."""

    def __init__(self, config: ModelConfig, extra_inputs: int = 0) -> None:
        super().__init__()
        channels = config.conv_channels
        self.shape = (channels[-1], config.feature_size, config.feature_size)
        self.dense = nn.Sequential(
            _dense(config.latent_dim + extra_inputs, config.dense_units),
            _dense(config.dense_units, channels[-1] * config.feature_size**2),
        )
        layers: list[nn.Module] = []
        for n_in, n_out in zip(channels[::-1], channels[-2::-1]):
            layers += [
                nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(n_out),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.ConvTranspose2d(channels[0], 3, 4, stride=2, padding=1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(-1, *self.shape)
        return torch.sigmoid(self.deconv(h))


class AttributeDecoder(nn.Module):
    """z → logits of the Bernoulli p(w|z), one per attribute."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _dense(config.latent_dim, config.attribute_units),
            _dense(config.attribute_units, config.attribute_units),
            nn.Linear(config.attribute_units, config.n_attributes),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def fold_batch_norms(module: M) -> M:
    """An inference copy of `module`, in eval mode, in which every batch norm that directly follows a linear or
    convolutional layer in a Sequential is folded into that layer's weights: the same function (to float rounding)
    with one pass over the activations fewer per layer. `module` itself is left as it is."""
    return _folded(copy.deepcopy(module).eval())


def _folded(module: M) -> M:
    if not isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            setattr(module, name, _folded(child))
        return module
    layers: list[nn.Module] = []
    for layer in map(_folded, module):
        previous = layers[-1] if layers else None
        if isinstance(layer, nn.BatchNorm1d) and isinstance(previous, nn.Linear):
            layers[-1] = fuse_linear_bn_eval(previous, layer)
        elif isinstance(layer, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d | nn.ConvTranspose2d):
            layers[-1] = fuse_conv_bn_eval(previous, layer, transpose=isinstance(previous, nn.ConvTranspose2d))
        else:
            layers.append(layer)
    return nn.Sequential(*layers)  # type: ignore[return-value]  # M is Sequential here
