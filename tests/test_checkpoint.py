import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from jmvae.model.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMeta,
    load_model,
    now_iso,
    read_checkpoint,
    save_checkpoint,
)
from jmvae.model.config import ModelConfig
from jmvae.model.jmvae import JMVAE
from jmvae.model.preprocess import Preprocessing


def _meta(config: ModelConfig) -> CheckpointMeta:
    return CheckpointMeta(
        package_version="test",
        created_at=now_iso(),
        model=config,
        attribute_names=tuple(f"A{i}" for i in range(config.n_attributes)),
        preprocessing=Preprocessing(image_size=config.image_size),
        alpha=0.1,
        training={"epochs": 1},
        data={"name": "fixture"},
        epoch=1,
        step=10,
        metrics={"elbo": -123.5},
    )


@pytest.fixture
def saved(tmp_path: Path, tiny_model: JMVAE, tiny_config: ModelConfig) -> Path:
    path = tmp_path / "ckpt" / "model.safetensors"
    state = {"optimizer.0.exp_avg": torch.ones(3)}
    save_checkpoint(path, Checkpoint(_meta(tiny_config), tiny_model.state_dict(), state, {"epoch": 1}))
    return path


def test_round_trip(saved: Path, tiny_model: JMVAE, batch) -> None:
    model, meta = load_model(saved)
    assert not model.training
    assert meta.step == 10 and meta.metrics == {"elbo": -123.5} and meta.tensors_sha256
    assert meta.default_inference_mode == "kl"
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    x, w = batch
    tiny_model.eval()
    torch.testing.assert_close(model.q_joint(x, w).mean, tiny_model.q_joint(x, w).mean)
    full = read_checkpoint(saved)
    assert torch.equal(full.state_tensors["optimizer.0.exp_avg"], torch.ones(3))
    assert full.state_json == {"epoch": 1}
    assert list(saved.parent.iterdir()) == [saved]  # no temp file left behind


def test_metrics_of_old_checkpoints_read_with_todays_names(
    tmp_path: Path, tiny_model: JMVAE, tiny_config: ModelConfig
) -> None:
    """Checkpoints from before the one vocabulary (the shipped default model's too) named validation metrics
    val_<name>."""
    path = tmp_path / "old.safetensors"
    old = _meta(tiny_config).model_copy(update={"metrics": {"val_elbo": -123.5, "val_attr_auc_kl": 0.8}})
    save_checkpoint(path, Checkpoint(old, tiny_model.state_dict()))
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    stored = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["jmvae"])["metrics"]
    assert stored == {"val_elbo": -123.5, "val_attr_auc_kl": 0.8}  # written as an old version did
    assert read_checkpoint(path).meta.metrics == {"elbo": -123.5, "attr_auc_kl": 0.8}


def test_no_pickle_in_the_file(saved: Path) -> None:
    raw = saved.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])  # plain safetensors: a JSON header, then raw tensor bytes
    assert json.loads(header["__metadata__"]["jmvae"])["format"] == "jmvae-checkpoint"


def test_overwrite_is_atomic_and_keeps_old_file_on_failure(saved: Path, tiny_model: JMVAE, tiny_config) -> None:
    before = saved.read_bytes()
    bad = Checkpoint(_meta(tiny_config), {"x": object()})  # type: ignore[dict-item]
    with pytest.raises(AttributeError):  # the object is no tensor
        save_checkpoint(saved, bad)
    assert saved.read_bytes() == before
    assert list(saved.parent.iterdir()) == [saved]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda raw: raw[: len(raw) // 2], "not a readable safetensors file"),
        (lambda raw: raw[:5], "not a readable safetensors file"),
        (lambda raw: b"", "not a readable safetensors file"),
        (lambda raw: b"\x80\x04pickle" + raw, "not a readable safetensors file"),
        (lambda raw: raw[:-4] + bytes(b ^ 0xFF for b in raw[-4:]), "checksum"),
    ],
    ids=["half", "five-bytes", "empty", "garbage-prefix", "flipped-weights"],
)
def test_refuses_damaged_files(saved: Path, damage, reason: str) -> None:
    saved.write_bytes(damage(saved.read_bytes()))
    with pytest.raises(CheckpointError, match=reason) as e:
        load_model(saved)
    assert "\n" not in str(e.value) and str(saved) in str(e.value)


def test_refuses_missing_foreign_and_mismatched(tmp_path: Path, saved: Path, tiny_config: ModelConfig) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "nope.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="without jmvae metadata"):
        load_model(foreign)
    bad_meta = tmp_path / "bad-meta.safetensors"
    save_file({"w": torch.zeros(2)}, bad_meta, metadata={"jmvae": json.dumps({"format": "jmvae-checkpoint"})})
    with pytest.raises(CheckpointError, match="invalid metadata"):
        load_model(bad_meta)
    # Weights of another architecture under this config's name.
    other = JMVAE(tiny_config.model_copy(update={"latent_dim": 7}))
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, Checkpoint(_meta(tiny_config), other.state_dict()))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(wrong)


@pytest.mark.parametrize(
    "data",
    [
        {"sizes": {"train": 10}, "attribute_pair_counts": "many"},
        {"sizes": {"train": 10}, "attribute_pair_counts": [[1, 2], [2, 1]]},  # the wrong shape
        {"sizes": {"train": 10}, "attribute_pair_counts": "negative"},
        {"sizes": {"train": 10}, "attribute_pair_counts": "a pair more often than its attribute"},
        {"sizes": "ten"},
        {"attribute_prevalence": {"A0": "half"}},
    ],
    ids=["text", "shape", "negative", "impossible-pair", "sizes", "prevalence"],
)
def test_load_jmvae_refuses_unusable_attribute_statistics(
    tmp_path: Path, tiny_model: JMVAE, tiny_config: ModelConfig, data: dict
) -> None:
    """They complete the service's partial attribute vectors; damaged ones are refused at load, in one line."""
    from jmvae.model.checkpoint import load_jmvae

    n = tiny_config.n_attributes
    counts = torch.eye(n, dtype=torch.int64) * 3
    if data.get("attribute_pair_counts") == "negative":
        data["attribute_pair_counts"] = (-counts).tolist()
    elif data.get("attribute_pair_counts") == "a pair more often than its attribute":
        counts[0, 1] = counts[1, 0] = 5
        data["attribute_pair_counts"] = counts.tolist()
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, Checkpoint(_meta(tiny_config).model_copy(update={"data": data}), tiny_model.state_dict()))
    with pytest.raises(CheckpointError, match="attribute statistics") as e:
        load_jmvae(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_load_jmvae_accepts_pair_counts_of_real_faces(
    tmp_path: Path, tiny_model: JMVAE, tiny_config: ModelConfig
) -> None:
    from jmvae.model.checkpoint import load_jmvae

    present = (torch.rand(20, tiny_config.n_attributes, generator=torch.Generator().manual_seed(0)) < 0.4).long()
    data = {"sizes": {"train": 20}, "attribute_pair_counts": (present.T @ present).tolist()}
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, Checkpoint(_meta(tiny_config).model_copy(update={"data": data}), tiny_model.state_dict()))
    assert load_jmvae(path)[1].data == data


def test_export_halves_the_file_and_loads_as_float32(tmp_path: Path, saved: Path, tiny_model: JMVAE, batch) -> None:
    from jmvae.model.checkpoint import export_checkpoint

    target = tmp_path / "small.safetensors"
    meta = export_checkpoint(saved, target)
    assert meta.step == 10 and target.stat().st_size < 0.6 * saved.stat().st_size
    exported = read_checkpoint(target)
    assert not exported.state_tensors
    assert exported.model_state["joint_encoder.head.linear.weight"].dtype == torch.float16
    assert exported.model_state["image_encoder.features.dense.1.running_var"].dtype == torch.float32
    model, _ = load_model(target)
    assert next(model.parameters()).dtype == torch.float32
    x, w = batch
    tiny_model.eval()
    torch.testing.assert_close(model.q_joint(x, w).mean, tiny_model.q_joint(x, w).mean, atol=2e-2, rtol=2e-2)
