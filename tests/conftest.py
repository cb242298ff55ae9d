from pathlib import Path

import pytest
import torch
from tiny_configs import TINY_MODEL

from jmvae.model.config import ModelConfig
from jmvae.model.jmvae import JMVAE

# Every test has exactly one layer (markers in pyproject.toml): its file's, below, unless the test is marked with
# another; slow here marks every test of the file, and single slow tests carry @pytest.mark.slow. `pytest -m unit`
# runs the quick in-process tests; `pytest` runs all. A test file missing here stops the collection.
LAYERS = ("unit", "integration", "browser")
FILES: dict[str, tuple[str, ...]] = {
    "test_attributes.py": ("unit",),
    "test_baselines.py": ("integration",),
    "test_batching.py": ("unit",),
    "test_benchmark.py": ("integration", "slow"),
    "test_bounds.py": ("unit",),
    "test_celeba.py": ("unit",),
    "test_checkpoint.py": ("unit",),
    "test_comparison.py": ("unit",),
    "test_connections.py": ("integration",),
    "test_cuda.py": ("integration", "cuda", "slow"),
    "test_deadlines.py": ("integration",),
    "test_default_model.py": ("integration",),
    "test_deploy.py": ("integration",),
    "test_docs.py": ("unit",),
    "test_editing.py": ("unit",),
    "test_evaluate.py": ("unit",),
    "test_faces.py": ("unit",),
    "test_faults.py": ("integration",),
    "test_forward.py": ("unit",),
    "test_fuzz.py": ("integration",),
    "test_gan.py": ("integration",),
    "test_hostile.py": ("integration",),
    "test_image.py": ("integration", "slow", "image"),
    "test_images.py": ("unit",),
    "test_layering.py": ("unit",),
    "test_load.py": ("integration", "slow"),
    "test_logging.py": ("integration",),
    "test_metrics.py": ("unit",),
    "test_model.py": ("unit",),
    "test_preprocess.py": ("unit",),
    "test_reproduce.py": ("integration",),
    "test_reload.py": ("integration",),
    "test_serve.py": ("integration",),
    "test_service.py": ("integration",),
    "test_synthetic.py": ("unit",),
    "test_tracing.py": ("integration",),
    "test_training.py": ("integration",),
    "test_webui.py": ("browser",),
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    problems = [f"tests/conftest.py FILES: {name} does not exist" for name in FILES if not (here / name).is_file()]
    problems += [
        f"tests/conftest.py FILES: {name} needs exactly one of {LAYERS}"
        for name, marks in FILES.items()
        if sum(mark in LAYERS for mark in marks) != 1
    ]
    for item in items:
        marks = FILES.get(item.path.name)
        if marks is None:
            problems.append(f"{item.nodeid}: add {item.path.name} to FILES in tests/conftest.py with its layer")
            continue
        own = [mark.name for mark in item.iter_markers() if mark.name in LAYERS]
        if len(own) > 1:
            problems.append(f"{item.nodeid}: marked {' and '.join(own)}; a test has exactly one of {LAYERS}")
        for mark in marks:
            if not (mark in LAYERS and own):  # the test's own layer replaces its file's
                item.add_marker(mark)
    if problems:
        raise pytest.UsageError("test layers:\n  " + "\n  ".join(dict.fromkeys(problems)))


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
