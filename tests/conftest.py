import pytest
import torch
from tiny_configs import TINY_MODEL

from jmvae.model.config import ModelConfig
from jmvae.model.jmvae import JMVAE


@pytest.fixture
def tiny_config() -> ModelConfig:
    return TINY_MODEL


@pytest.fixture
def tiny_model() -> JMVAE:
    torch.manual_seed(0)
    return JMVAE(TINY_MODEL)


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
