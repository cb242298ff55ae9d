"""Checkpoints: safetensors weights with the JSON metadata in the same file's header, written atomically.

One file per checkpoint keeps weights and metadata from ever disagreeing, and one rename makes it appear whole.
Nothing is unpickled: a checkpoint from anywhere can be inspected safely, and loading one that is wrong,
truncated or corrupt fails with a one-line CheckpointError.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from safetensors import safe_open
from safetensors.torch import save_file

from .attributes import AttributePrior
from .baselines import Model, create_model
from .config import ModelConfig
from .faces import check_detection
from .jmvae import JMVAE
from .preprocess import Preprocessing

FORMAT: Final = "jmvae-checkpoint"
FORMAT_VERSION: Final = 1
MODEL_PREFIX = "model."
STATE_PREFIX = "state."
_META_KEY = "jmvae"
_STATE_META_KEY = "jmvae_training_state"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line that names the file and the reason."""


class CheckpointMeta(BaseModel):
    """Everything a reader needs to rebuild and use the model, and to know where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["jmvae-checkpoint"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    package_version: str
    created_at: str
    model: ModelConfig
    attribute_names: tuple[str, ...]
    preprocessing: Preprocessing
    alpha: float  # 0 means plain JMVAE (Eq. 1): the unimodal encoders were not trained, use mode "zero"
    training: dict[str, Any]  # the training configuration, as the trainer saved it
    data: dict[str, Any]  # summary of the data set trained on
    epoch: int  # completed epochs
    step: int  # optimiser steps taken
    metrics: dict[str, float] = {}  # the last validation's, named as in training/metrics.py
    tensors_sha256: str = ""  # filled in by save_checkpoint

    @field_validator("metrics", mode="before")
    @classmethod
    def _current_metric_names(cls, metrics: Any) -> Any:
        """Checkpoints written before the one vocabulary of metric names (the default model among them) named
        every validation metric "val_<name>"; they read with today's names."""
        if isinstance(metrics, Mapping):
            return {k.removeprefix("val_") if isinstance(k, str) else k: v for k, v in metrics.items()}
        return metrics

    @property
    def default_inference_mode(self) -> Literal["kl", "zero"]:
        return "kl" if self.alpha > 0 else "zero"


def package_version() -> str:
    try:
        return importlib_metadata.version("jmvae")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Checkpoint:
    meta: CheckpointMeta
    model_state: dict[str, torch.Tensor]
    # Trainer state (optimiser moments, …) in a "last" checkpoint; empty in a final one.
    state_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    state_json: dict[str, Any] = field(default_factory=dict)


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: a temp file in the same directory, fsync, then rename over `path`."""
    tensors = {MODEL_PREFIX + k: v.detach().contiguous().cpu() for k, v in checkpoint.model_state.items()}
    tensors |= {STATE_PREFIX + k: v.detach().contiguous().cpu() for k, v in checkpoint.state_tensors.items()}
    meta = checkpoint.meta.model_copy(update={"tensors_sha256": _digest(tensors)})
    header = {_META_KEY: meta.model_dump_json()}
    if checkpoint.state_json:
        header[_STATE_META_KEY] = json.dumps(checkpoint.state_json)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint file; raises CheckpointError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors reports truncation and corruption with several exception types
        raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(e)})") from None
    if _META_KEY not in header:
        raise CheckpointError(f"{path}: safetensors file without jmvae metadata (not a jmvae checkpoint)")
    try:
        meta = CheckpointMeta.model_validate_json(header[_META_KEY])
    except ValidationError as e:
        raise CheckpointError(f"{path}: invalid metadata ({_one_line(e)})") from None
    if meta.tensors_sha256 != _digest(tensors):
        raise CheckpointError(f"{path}: weights do not match their checksum (file corrupted)")
    try:
        state_json = json.loads(header.get(_STATE_META_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid training-state metadata ({_one_line(e)})") from None
    model_state = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    state = {k[len(STATE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
    return Checkpoint(meta, model_state, state, state_json)


def build_model(checkpoint: Checkpoint, path: Path | str = "checkpoint") -> Model:
    """The checkpoint's model (JMVAE, or a VAE/CVAE baseline) with its weights, in eval mode, on their device."""
    meta = checkpoint.meta
    if len(meta.attribute_names) != meta.model.n_attributes:
        raise CheckpointError(
            f"{path}: {len(meta.attribute_names)} attribute names for a model of {meta.model.n_attributes}"
        )
    model = create_model(meta.model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(checkpoint.model_state))
    unexpected = sorted(set(checkpoint.model_state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the model config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in checkpoint.model_state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(checkpoint.model_state)
    device = next(iter(checkpoint.model_state.values())).device
    return model.to(device).eval()


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[Model, CheckpointMeta]:
    """The model of a checkpoint file, ready for inference on `device`."""
    checkpoint = read_checkpoint(path, device)
    return build_model(checkpoint, path), checkpoint.meta


def export_checkpoint(source: Path, target: Path, dtype: torch.dtype = torch.float16) -> CheckpointMeta:
    """Weights only, floating-point parameters cast to `dtype` (batch-norm statistics stay float32): the compact
    file a service ships. Loading casts back to float32, so nothing else changes for readers."""
    checkpoint = read_checkpoint(source)
    build_model(checkpoint, source)  # refuse to export what could not be loaded
    state = {
        name: t.to(dtype) if t.is_floating_point() and "running_" not in name else t
        for name, t in checkpoint.model_state.items()
    }
    save_checkpoint(target, Checkpoint(checkpoint.meta, state))
    return read_checkpoint(target).meta


def load_jmvae(path: Path, device: str | torch.device = "cpu") -> tuple[JMVAE, CheckpointMeta]:
    """Like load_model, for readers that need the joint model itself (the service), not a baseline: it must also
    have been trained on faces cropped as the service crops photos (`jmvae.model.faces`)."""
    model, meta = load_model(path, device)
    if not isinstance(model, JMVAE):
        raise CheckpointError(f"{path}: holds a {meta.model.kind.upper()} baseline, not a JMVAE")
    if meta.preprocessing.crop != "detector":
        raise CheckpointError(
            f"{path}: trained on the fixed crop of aligned CelebA images, but the service crops "
            "each photo around its detected face; retrain it (preprocessing.crop = 'detector')"
        )
    try:
        check_detection(meta.preprocessing.detection)
    except ValueError as e:
        raise CheckpointError(f"{path}: trained on another face crop: {e}") from None
    try:  # what completes the service's partial attribute vectors
        AttributePrior.from_summary(meta.data, meta.attribute_names)
    except ValueError as e:
        raise CheckpointError(f"{path}: {_one_line(e)}") from None
    return model, meta


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]
