"""The one definition of the tiny model and the tiny training run the tests use; a test changes only what it needs.

TINY_MODEL is built in memory (16×16 images); TINY_RUN is a `jmvae train --config` file for the real trainer on
32×32 synthetic faces, a few seconds of CPU an epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

from jmvae.model.config import ModelConfig

TINY_MODEL = ModelConfig(
    image_size=16, n_attributes=40, latent_dim=6, conv_channels=(8, 16), dense_units=32, attribute_units=16
)

TINY_RUN: dict[str, object] = {
    "batch_size": 50,
    "warmup_epochs": 1,
    "val_k": 2,
    "val_n_w": 2,
    "val_max_examples": 50,
    "progress": False,
    "model": {
        "image_size": 32,
        "latent_dim": 8,
        "conv_channels": [8, 16, 16],
        "dense_units": 32,
        "attribute_units": 16,
    },
    "preprocessing": {"image_size": 32},
    "synthetic": {"n_train": 200, "n_val": 50, "n_test": 0},
}


def tiny_run(*layers: dict[str, object], **changes: object) -> dict[str, object]:
    """TINY_RUN with each layer's changes applied in turn, then `changes`: a dict value updates that table key by
    key, None removes a key."""
    config = {key: dict(value) if isinstance(value, dict) else value for key, value in TINY_RUN.items()}
    for layer in (*layers, changes):
        for key, value in layer.items():
            if value is None:
                config.pop(key, None)
            elif isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = config[key] | value
            else:
                config[key] = dict(value) if isinstance(value, dict) else value
    return config


def write_tiny_run(path: Path, *layers: dict[str, object], **changes: object) -> Path:
    """Writes tiny_run(*layers, **changes) as a TOML file at `path`, as users write them; returns `path`."""
    config = tiny_run(*layers, **changes)
    tables = {key: value for key, value in config.items() if isinstance(value, dict)}
    lines = [f"{key} = {_toml(value)}" for key, value in config.items() if key not in tables]  # before any table
    for name, table in tables.items():
        lines += [f"[{name}]", *(f"{key} = {_toml(value)}" for key, value in table.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml, value)) + "]"
    raise TypeError(f"no TOML for {value!r}")
