"""The training configuration: a pydantic model read from a TOML or JSON file, with command-line overrides."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jmvae.model.config import ModelConfig
from jmvae.model.preprocess import Preprocessing

CONFIG_FILE = "config.json"

# Fields that may differ between a run and its resumption: they change how, not what, is trained.
RESUMABLE_OVERRIDES = {"epochs", "device", "precision", "compile", "progress", "cache_dir", "workers", "log_every"}


class SyntheticConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    n_train: int = Field(4000, ge=1)
    n_val: int = Field(500, ge=0)
    n_test: int = Field(500, ge=0)
    seed: int = Field(0, description="seed of the generated data, independent of the training seed")


class GanConfig(BaseModel):
    """The paper's GAN combination (jmvae.model.gan): a discriminator against decoded faces, trained alongside."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The JMVAE loss is summed over 12,288 pixel values (thousands of nats per image); the adversarial loss is one
    # value per face, so it needs a weight of that order to move the decoder at all. The pixel term's pull scales
    # as 1/σ², so 100 suits σ = 0.1; at σ = 0.5 it overpowered the pixels (docs/training.md, "The GAN
    # combination, measured").
    weight: float = Field(100.0, gt=0.0, description="γ: weight of the decoder's adversarial loss (nats per face)")
    lr: float = Field(2e-4, gt=0.0, description="the discriminator's Adam learning rate")
    adam_betas: tuple[float, float] = (0.5, 0.999)


class TrainConfig(BaseModel):
    """Every knob of a training run; saved as RUN_DIR/config.json and into each checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str = Field("synthetic", description="a CelebA root in its native layout, or 'synthetic'")
    model: ModelConfig = ModelConfig()
    preprocessing: Preprocessing = Preprocessing()
    synthetic: SyntheticConfig = SyntheticConfig()
    alpha: float = Field(0.1, ge=0.0, description="JMVAE-kl weight α (Eq. 2); 0 trains plain JMVAE (Eq. 1)")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(100, ge=2, description="global batch, split evenly over distributed processes")
    lr: float = Field(1e-3, gt=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = Field(20.0, ge=0.0, description="KL warm-up of the prior term, 0 → 1, linear per step")
    hflip: bool = Field(False, description="flip a random half of each batch left-right (the paper did not)")
    shift: int = Field(
        0,
        ge=0,
        le=16,
        description="translate each training face by up to this many pixels "
        "each way, edges repeated (the paper did not)",
    )
    jitter_scale: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="re-frame each training face as if its crop were "
        "larger or smaller by up to e^±jitter_scale (the detector's own variation)",
    )
    jitter_shift: float = Field(
        0.0, ge=0.0, le=0.25, description="... and moved by up to this fraction of its side along each axis"
    )
    rotate: float = Field(0.0, ge=0.0, le=30.0, description="turn each training face by up to this many degrees")
    colour: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="scale each training face's brightness, contrast and saturation by up to e^±colour",
    )
    ema: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="decay per step of a moving average of the weights, which validation measures and the "
        "checkpoints' model holds (the live weights resume from the training state); 0: none, the live weights",
    )
    gan: GanConfig | None = Field(None, description="train with a discriminator (VAE-GAN style), as the paper did")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA and on CPUs with AMX, else fp32"
    )
    compile: bool = Field(False, description="torch.compile the model (CUDA only pays off)")
    val_k: int = Field(10, ge=1, description="importance samples of the per-epoch validation bounds")
    val_n_w: int = Field(10, ge=1, description="prior samples for log p(w) in validation")
    val_max_examples: int = Field(1000, ge=1)
    cache_dir: Path | None = Field(None, description="preprocessed-image cache; default ~/.cache/jmvae")
    workers: int | None = Field(None, ge=1, description="processes for building the cache; default all cores")
    log_every: int = Field(20, ge=1, description="steps between train records in metrics.jsonl")
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.gan is not None and self.model.kind != "jmvae":
            raise ValueError(f"gan trains a JMVAE's decoder against a discriminator; model.kind is {self.model.kind}")
        if self.preprocessing.image_size != self.model.image_size:
            raise ValueError(
                f"preprocessing.image_size {self.preprocessing.image_size} != model.image_size {self.model.image_size}"
            )
        return self

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or Path.home() / ".cache" / "jmvae"


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML (.toml) or JSON (anything else) file as a dict; errors name the file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the file, then the overrides (nested dicts merge key by key)."""
    values = read_config_file(path) if path else {}
    return TrainConfig.model_validate(_deep_merge(values, overrides or {}))


def resumed_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """RUN_DIR/config.json with `overrides`, which may change only RESUMABLE_OVERRIDES; a ValueError names the
    other fields they would change."""
    saved = TrainConfig.model_validate_json((run_dir / CONFIG_FILE).read_text())
    config = load_config(run_dir / CONFIG_FILE, overrides)
    changed = sorted(
        k for k in TrainConfig.model_fields if k not in RESUMABLE_OVERRIDES and getattr(config, k) != getattr(saved, k)
    )
    if changed:
        raise ValueError(f"cannot change {', '.join(changed)} when resuming {run_dir}")
    return config


def evaluation_config(
    saved: TrainConfig,
    data: str,
    preprocessing: Preprocessing,
    max_examples: int,
    seed: int,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> TrainConfig:
    """What `jmvae eval` loads the data of a checkpoint trained with `saved` by: `data` cropped by `preprocessing`,
    or synthetic faces drawn afresh from `seed`, `max_examples` in each of val and test."""
    return saved.model_copy(
        update={
            "data": data,
            "progress": progress,
            "preprocessing": preprocessing,
            "cache_dir": cache_dir or saved.cache_dir,
            "synthetic": SyntheticConfig(n_train=1, n_val=max_examples, n_test=max_examples, seed=seed),
        }
    )
