"""Service settings, read from JMVAE_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JMVAE_", extra="ignore", frozen=True)

    checkpoint: Path | None = Field(None, description="checkpoint file; unset serves the model shipped in the package")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="the model's matrix work: fp32, or bf16/fp16 autocast (weights stay fp32); answers stay within "
        "0.03 of fp32's probabilities and 8 grey levels of its faces (tests/test_forward.py)",
    )
    max_batch_size: int = Field(32, ge=1, description="largest merged forward pass; 1 turns batching off")
    # 0: a batch is whatever queued while the previous one ran, so it grows with the load and a lone request
    # never idles. A 5 ms wait halved throughput at 1 client (bench/serving.py) and gained nothing at 8 or 32.
    max_batch_wait_ms: float = Field(0.0, ge=0.0, description="how long a batch waits for company after its first item")
    # Uploads are decoded and cropped concurrently and reach the image path one by one: without this its batches
    # averaged 1.2 faces at 32 clients, each pass costing the model nearly what one of eight does. At 100 ms: 11%
    # more answers at 32 clients and 8-12% less server CPU per request at 8 and 32 (bench/serving.py).
    upstream_wait_ms: float = Field(
        100.0,
        ge=0.0,
        description="how long an image-path batch waits, after its first item, for uploads still being decoded "
        "and cropped while there are at least as many of them as cores; 0: not at all",
    )
    max_queue: int = Field(256, ge=1, description="items waiting per model path before requests get 503")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="width × height of an upload, checked before decoding")
    max_faces: int = Field(16, ge=0, description="upper bound of n in POST /generate")
    max_faces_per_photo: int = Field(8, ge=1, description="faces answered by POST /attributes?faces=all, best first")
    max_zeta: float = Field(4.0, gt=0.0, description="upper bound of zeta in POST /generate")
    api_key: SecretStr | None = Field(
        None, description="when set, a bearer token required by all but health, readiness, metrics and the web page"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma-separated origins")
    warmup_batches: int = Field(3, ge=1, description="forward passes per model path before /readyz turns 200")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: text when stderr is a terminal, else json (one object per line, for log collectors)"
    )
    http_parser: Literal["auto", "httptools", "h11"] = Field(
        "auto", description="uvicorn's HTTP parser; auto: httptools (C) when installed, else h11 (pure Python)"
    )
    # Slow clients (service/connections.py), as nginx's client_header_timeout and client_body_timeout.
    header_timeout_s: float = Field(10.0, gt=0, le=3600, description="a request's headers must arrive within this")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="longest pause while a request body arrives")
    max_connections: int = Field(
        4096, ge=1, description="open connections (and requests) per worker; a request beyond them gets a 503"
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="uvicorn's event loop; auto: uvloop when installed, else asyncio's"
    )
    # Deadlines (issue 16) ------------------------------------------------------------------------------------
    request_timeout_ms: float = Field(
        10_000.0,
        gt=0.0,
        description="longest a request waits, from its arrival until its model work starts, before a 503 "
        "deadline_exceeded; X-Request-Timeout-Ms may ask for less",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value
