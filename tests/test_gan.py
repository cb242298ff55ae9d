"""The paper's GAN combination: the discriminator's terms, and `jmvae train --gan` end to end with exact resume."""

import json
from pathlib import Path

import pytest
import torch
from tiny_configs import write_tiny_run

from jmvae.cli import main
from jmvae.model.checkpoint import read_checkpoint
from jmvae.model.config import ModelConfig
from jmvae.model.gan import Discriminator, discriminator_loss, generator_terms
from jmvae.model.jmvae import JMVAE
from jmvae.training.metrics import unknown

# The tiny run with the paper's discriminator, its terms weighted 50.
GAN_RUN = {"log_every": 1, "synthetic": {"n_train": 150}, "gan": {"weight": 50.0}}


@pytest.mark.unit
def test_adversarial_terms_reach_the_decoder_and_the_discriminator(tiny_config: ModelConfig, batch) -> None:
    torch.manual_seed(0)
    model, discriminator = JMVAE(tiny_config), Discriminator(tiny_config)
    x, w = batch
    terms = generator_terms(model, discriminator, w, torch.Generator().manual_seed(0))
    assert terms.fakes.shape == (2 * len(w), *x.shape[1:])  # one face from q(z|w), one from p(z), per example
    terms.generator_loss.backward()
    assert all(p.grad is not None for p in model.image_decoder.parameters())
    assert all(p.grad is None for p in model.image_encoder.parameters())  # images are not encoded here
    loss, logs = discriminator_loss(discriminator, x, terms.fakes.detach())
    assert set(logs) == {"d_loss", "d_real", "d_fake"} and 0 < logs["d_real"] < 1
    torch.testing.assert_close(loss.detach(), logs["d_loss"])


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("gan") / "gan.toml", GAN_RUN)


def _train(out: Path, config: Path, *extra: str) -> int:
    return main(["train", "--data", "synthetic", "--out", str(out), "--config", str(config), "--gan", *extra])


def test_gan_training_logs_the_discriminator_and_resumes_exactly(tmp_path: Path, config: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _train(whole, config, "--epochs", "2") == 0
    assert _train(split, config, "--epochs", "1") == 0
    assert main(["train", "--out", str(split), "--epochs", "2", "--resume", "--gan"]) == 0

    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert all({"d_loss", "d_real", "d_fake", "g_adv"} <= set(r) for r in train)
    assert not [unknown(r) for r in records if unknown(r)]  # every name in training/metrics.py
    assert json.loads((whole / "config.json").read_text())["gan"]["weight"] == 50.0

    # The run's state carries the discriminator; the served weights do not.
    last, final = read_checkpoint(whole / "last.safetensors"), read_checkpoint(whole / "final.safetensors")
    assert any(k.startswith("discriminator.") for k in last.state_tensors)
    assert any(k.startswith("d_optimizer.") for k in last.state_tensors)
    assert not any("discriminator" in k for k in final.model_state)

    # Stopping after epoch 1 and resuming reproduces the uninterrupted run, discriminator included.
    resumed = read_checkpoint(split / "last.safetensors")
    for name, value in last.model_state.items():
        assert torch.equal(value, resumed.model_state[name]), name
    for name, value in last.state_tensors.items():
        assert torch.equal(value, resumed.state_tensors[name]), name


def test_gan_changes_the_decoder(tmp_path: Path, config: Path) -> None:
    plain = write_tiny_run(tmp_path / "plain.toml", GAN_RUN, gan=None)
    assert (
        main(
            ["train", "--data", "synthetic", "--out", str(tmp_path / "plain"), "--config", str(plain), "--epochs", "1"]
        )
        == 0
    )
    assert _train(tmp_path / "gan", config, "--epochs", "1") == 0
    a = read_checkpoint(tmp_path / "plain" / "final.safetensors").model_state
    b = read_checkpoint(tmp_path / "gan" / "final.safetensors").model_state
    decoder = [k for k in a if k.startswith("image_decoder.") and a[k].is_floating_point()]
    assert any(not torch.equal(a[k], b[k]) for k in decoder)


def test_gan_needs_a_jmvae(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path / "vae", config, "--epochs", "1", "--model", "vae") != 0
    assert "gan trains a JMVAE's decoder" in capsys.readouterr().err
