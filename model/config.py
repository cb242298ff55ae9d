"""Architecture and likelihood settings of a JMVAE; stored in every checkpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """Defaults follow the paper's CelebA network (masa-su/jmvae): four 4×4 stride-2 convolutions with
    64/128/256/256 filters (batch norm on layers 2–4), a 1024-unit dense layer, a 512-unit attribute branch
    and a 128-dimensional latent space."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # "jmvae" is the model of the paper; "vae" (images only) and "cvae" (images given attributes) are its Table 1
    # baselines, built from the same networks; "classifier" (image → attributes, the same conv tower) scores the
    # attributes of generated faces (coherence).
    kind: Literal["jmvae", "vae", "cvae", "classifier"] = "jmvae"
    image_size: int = Field(64, ge=8)
    n_attributes: int = Field(40, ge=1)
    latent_dim: int = Field(128, ge=1)
    conv_channels: tuple[int, ...] = Field((64, 128, 256, 256), min_length=1)
    dense_units: int = Field(1024, ge=1)
    attribute_units: int = Field(512, ge=1)
    # p(x|z) is a Gaussian on pixels scaled to [0, 1]. With a fixed σ the image term is a scaled squared error;
    # "learned" makes σ a free parameter per pixel value, bounded below so the density cannot collapse.
    image_likelihood: Literal["gaussian-fixed", "gaussian-learned"] = "gaussian-fixed"
    image_sigma: float = Field(0.1, gt=0.0, description="σ of p(x|z); the initial σ when learned")
    min_image_sigma: float = Field(0.01, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.image_size % (2 ** len(self.conv_channels)):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**{len(self.conv_channels)} "
                "(one halving per convolution)"
            )
        if self.min_image_sigma > self.image_sigma:
            raise ValueError("min_image_sigma must not exceed image_sigma")
        return self

    @property
    def feature_size(self) -> int:
        """Spatial size of the last convolution's output."""
        return self.image_size // 2 ** len(self.conv_channels)
