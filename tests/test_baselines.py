"""The paper's VAE and CVAE baselines: same networks, their own bounds, trained and evaluated by the package."""

import json
from pathlib import Path

import pytest
import torch
from tiny_configs import write_tiny_run

from jmvae.cli import main
from jmvae.model.baselines import CVAE, VAE, create_model
from jmvae.model.bounds import cvae_log_px_given_w, vae_log_px
from jmvae.model.checkpoint import CheckpointError, load_jmvae, load_model
from jmvae.model.config import ModelConfig
from jmvae.training.metrics import unknown


@pytest.mark.unit
def test_baselines_share_the_networks(tiny_config: ModelConfig, batch) -> None:
    vae = create_model(tiny_config.model_copy(update={"kind": "vae"}))
    cvae = create_model(tiny_config.model_copy(update={"kind": "cvae"}))
    assert isinstance(vae, VAE) and isinstance(cvae, CVAE)
    x, w = batch
    for model in (vae, cvae):
        terms = model(x, w, beta=0.5, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(terms.loss, -(terms.log_px - 0.5 * terms.kl_prior))
        assert float(terms.log_pw) == 0.0 and float(terms.kl_image) == 0.0
        terms.loss.backward()
    # The CVAE decoder sees w: other attributes, other image.
    cvae.eval()
    z = torch.zeros(12, tiny_config.latent_dim)
    assert not torch.allclose(cvae.decode_image(z, w), cvae.decode_image(z, -w))


@pytest.mark.unit
def test_baseline_bounds_tighten_with_k(tiny_config: ModelConfig, batch) -> None:
    x, w = batch
    x, w = x.repeat(10, 1, 1, 1), w.repeat(10, 1)
    for kind in ("vae", "cvae"):
        torch.manual_seed(0)
        model = create_model(tiny_config.model_copy(update={"kind": kind})).eval()
        g = torch.Generator().manual_seed(0)

        def bound(k: int, kind: str = kind, model: torch.nn.Module = model, g: torch.Generator = g) -> float:
            if kind == "vae":
                return float(vae_log_px(model, x, k=k, generator=g).mean())
            return float(cvae_log_px_given_w(model, x, w, k=k, chunk=24, generator=g).mean())

        assert bound(1) < bound(50), kind


@pytest.mark.parametrize(
    "kind, key", [("vae", "log_px_single"), ("cvae", "log_px_given_w"), ("classifier", "attr_auc_classifier")]
)
def test_train_and_eval_a_baseline(tmp_path: Path, kind: str, key: str, capsys) -> None:
    config = write_tiny_run(tmp_path / "tiny.toml", synthetic={"n_train": 100})
    out = tmp_path / kind
    assert (
        main(
            [
                "train",
                "--data",
                "synthetic",
                "--out",
                str(out),
                "--config",
                str(config),
                "--epochs",
                "1",
                "--model",
                kind,
            ]
        )
        == 0
    )
    model, meta = load_model(out / "final.safetensors")
    assert meta.model.kind == kind and type(model).__name__.lower() in (kind, f"attribute{kind}")
    assert key in meta.metrics and "attr_acc_kl" not in meta.metrics and not unknown(meta.metrics)
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "final.safetensors"),
                "--data",
                "synthetic",
                "--k",
                "2",
                "--max-examples",
                "20",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert key in printed and not unknown(printed)
    with pytest.raises(CheckpointError, match=f"{kind.upper()} baseline"):
        load_jmvae(out / "final.safetensors")
