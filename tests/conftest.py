import pytest
import torch

from jmvae.model.config import ModelConfig
from jmvae.model.jmvae import JMVAE

TINY = ModelConfig(
    image_size=16, n_attributes=40, latent_dim=6, conv_channels=(8, 16), dense_units=32, attribute_units=16
)


@pytest.fixture
def tiny_config() -> ModelConfig:
    return TINY


@pytest.fixture
def tiny_model() -> JMVAE:
    torch.manual_seed(0)
    return JMVAE(TINY)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 3, 16, 16, generator=g)
    w = torch.where(torch.rand(12, 40, generator=g) < 0.3, 1.0, -1.0)
    return x, w


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    from service_support import train_tiny_checkpoint

    return train_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))
