"""The data a training configuration names: the synthetic faces or a CelebA root in its native layout. Its own
module, so that the data types (data.py) import no data source and no source imports another."""

from __future__ import annotations

from pathlib import Path

from .celeba import load_celeba
from .config import TrainConfig
from .data import FaceDataset
from .synthetic import synthetic_dataset


def load_dataset(config: TrainConfig) -> FaceDataset:
    if config.data == "synthetic":
        s = config.synthetic
        return synthetic_dataset(s.n_train, s.n_val, s.n_test, seed=s.seed, image_size=config.model.image_size)
    return load_celeba(
        Path(config.data),
        config.preprocessing,
        config.resolved_cache_dir(),
        workers=config.workers,
        progress=config.progress,
    )
