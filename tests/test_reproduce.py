"""`jmvae reproduce`: four models from one configuration into one report, resumable between and inside models; and
`jmvae eval` refusing (or, with --allow-mismatch, marking) a baseline that is not like with like."""

import json
import os
import re
import shlex
import shutil
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_configs import write_tiny_run

from jmvae.cli import main
from jmvae.training import reproduce as reproduce_module
from jmvae.training.metrics import unknown
from jmvae.training.reproduce import MODELS

EVAL = ["--k", "2", "--nw", "2", "--max-examples", "20"]


def _reproduce(out: Path, *flags: str) -> int:
    return main(["reproduce", "--data", "synthetic", "--out", str(out), *flags, *EVAL, "--no-progress"])


def _train(out: Path, config: Path, kind: str, epochs: str = "1") -> None:
    assert main(["train", "--data", "synthetic", "--out", str(out), "--config", str(config), "--epochs", epochs,
                 "--model", kind]) == 0  # fmt: skip


def _weights(path: Path) -> dict:
    return {k: v for k, v in load_file(path).items() if k.startswith("model.")}


def _assert_same_models(run: Path, reference: Path) -> None:
    for kind in MODELS:
        ours, theirs = _weights(run / kind / "final.safetensors"), _weights(reference / kind / "final.safetensors")
        assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours), kind


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("config") / "tiny.toml", synthetic={"n_train": 100})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Path:
    """An uninterrupted reproduce, 2 epochs of each model: what every interrupted one must end as."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert _reproduce(out, "--config", str(tiny), "--epochs", "2") == 0
    return out


def test_reproduce_writes_every_row_and_figure(reference: Path) -> None:
    metrics = json.loads((reference / "metrics.json").read_text())
    table = ("log_px_multiple", "log_px_single", "log_px_given_w", "vae_log_px_single", "cvae_log_px_given_w")
    leads = ("log_px_multiple_minus_vae", "log_px_single_minus_vae", "log_px_given_w_minus_cvae")
    for key in (*table, *leads, *(f"{name}_se" for name in (*table, *leads)), "coherence_auc", "attr_auc_kl"):
        assert isinstance(metrics[key], float), key
    assert all(metrics[f"{name}_se"] > 0 for name in (*table, *leads))
    assert not unknown(metrics)
    # The lead is the mean of the per-example differences, so it equals the difference of the means.
    assert metrics["log_px_single_minus_vae"] == pytest.approx(metrics["log_px_single"] - metrics["vae_log_px_single"])
    report = (reference / "report.md").read_text()

    def cell(key: str, sign: str = "") -> str:
        return f"{metrics[key]:{sign}.1f} ± {metrics[key + '_se']:.1f}"

    for row in (
        f"| VAE | {cell('vae_log_px_single')} | — |",
        f"| CVAE | — | {cell('cvae_log_px_given_w')} |",
        f"| JMVAE-kl, q(z\\|x,w) (multiple) | {cell('log_px_multiple')} | {cell('log_px_given_w')} |",
        f"| JMVAE-kl, q(z\\|x) (single) | {cell('log_px_single')} | — |",
        f"| log p(x): JMVAE-kl, q(z\\|x) − VAE | {cell('log_px_single_minus_vae', '+')} |",
        f"| log p(x\\|w): JMVAE-kl − CVAE | {cell('log_px_given_w_minus_cvae', '+')} |",
        "| attr_auc_kl |",
        "Coherence:",
        "fixed σ = 0.1",
        "| Bald |",  # Figure 1(a) scored by the classifier
    ):
        assert row in report, row
    for figure in ("fig1a_attribute_faces.png", "fig1b_latent_pca.png", "fig2_edit.png"):
        assert (reference / figure).stat().st_size > 0 and f"]({figure})" in report
    for kind in MODELS:  # one configuration, the kind aside
        config = json.loads((reference / kind / "config.json").read_text())
        assert config.pop("model").pop("kind") == kind
        expected = json.loads((reference / "config.json").read_text())
        expected.pop("model")
        assert config == expected


def test_the_commands_in_the_report_are_what_ran(reference: Path, tmp_path: Path, capsys) -> None:
    report = (reference / "report.md").read_text()
    block = report.split("They are these commands")[1].split("```bash\n")[1].split("```")[0]
    commands = [shlex.split(line) for line in block.splitlines()]
    assert [c[1] for c in commands] == ["train"] * 4 + ["eval"]
    # The VAE's training command gives the VAE reproduce trained, bit for bit.
    vae = next(c for c in commands if c[-1] == "vae")
    vae[vae.index("--out") + 1] = str(tmp_path / "vae")
    assert main(vae[1:]) == 0
    ours, theirs = _weights(tmp_path / "vae" / "final.safetensors"), _weights(reference / "vae" / "final.safetensors")
    assert all((ours[k] == theirs[k]).all() for k in theirs)
    # The evaluation command gives the same numbers.
    evaluate = commands[-1]
    evaluate[evaluate.index("--out") + 1] = str(tmp_path / "eval")
    assert main([*evaluate[1:], "--no-progress"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )
    invocation = report.split("The invocations")[1].split("```bash\n")[1].splitlines()[0]
    assert shlex.split(invocation.split("  #")[0])[:2] == ["jmvae", "reproduce"] and "--epochs 2" in invocation


@pytest.mark.parametrize("where", ["between models", "inside a model"])
def test_an_interrupted_reproduce_resumes_to_the_same_models(
    where: str, reference: Path, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "run"
    progress = reproduce_module._Progress
    train, epoch_done = progress.train, progress._epoch_done
    if where == "between models":

        def killed_before_cvae(self, kind, dataset, device):  # the process dies after the VAE's final checkpoint
            if kind == "cvae":
                raise KeyboardInterrupt
            return train(self, kind, dataset, device)

        monkeypatch.setattr(progress, "train", killed_before_cvae)
        with pytest.raises(KeyboardInterrupt):
            _reproduce(out, "--config", str(tiny), "--epochs", "2")
    else:

        def ctrl_c_in_epoch_2_of_cvae(self, trainer):
            epoch_done(self, trainer)
            if self.kind == "cvae" and trainer.epoch == 1:
                os.kill(os.getpid(), signal.SIGINT)

        monkeypatch.setattr(progress, "_epoch_done", ctrl_c_in_epoch_2_of_cvae)
        assert _reproduce(out, "--config", str(tiny), "--epochs", "2") == 128 + signal.SIGINT
        assert "continue with --resume" in capsys.readouterr().err
        assert (out / "cvae" / "last.safetensors").is_file()
    assert (out / "vae" / "final.safetensors").is_file() and not (out / "cvae" / "final.safetensors").exists()
    assert not (out / "report.md").exists()
    monkeypatch.undo()
    assert _reproduce(out, "--resume") == 0
    err = capsys.readouterr().err
    assert "reproduce: jmvae has trained its 2 epochs; skipped" in err
    assert "reproduce: vae has trained its 2 epochs; skipped" in err
    assert (
        "resuming cvae (3/4) at epoch 2/2" if where == "inside a model" else "training cvae (3/4) at epoch 1/2"
    ) in err
    assert re.search(r"classifier \(4/4\) epoch 2/2, \d+ s an epoch; about \d+ min left", err)
    _assert_same_models(out, reference)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "reproduce.jsonl").read_text().splitlines()]
    assert [r["trained_epochs"].get("jmvae") for r in log] == [2, 0] and log[1]["command"].endswith("--resume")


def test_resume_refuses_a_model_that_is_not_like_the_others(reference: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    wide = write_tiny_run(tmp_path / "wide.toml", synthetic={"n_train": 100}, model={"image_sigma": 0.5})
    for name in os.listdir(out / "vae"):
        (out / "vae" / name).unlink()
    _train(out / "vae", wide, "vae", "2")
    capsys.readouterr()
    assert _reproduce(out, "--resume") == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "vae/final.safetensors differs from this reproduce: σ 0.5 vs 0.1" in line


def test_reproduce_refuses_bad_starts(reference: Path, tiny: Path, tmp_path: Path, capsys) -> None:
    gan = write_tiny_run(tmp_path / "gan.toml", synthetic={"n_train": 100}, gan={})
    for flags, message in (
        (["--config", str(tiny)], "already holds a reproduce; pass --resume"),
        (["--resume", "--config", str(tiny)], "--config cannot be given with it"),
        (["--resume", "--epochs", "1"], "has trained 2 epochs, more than this reproduce's 1"),
    ):
        assert _reproduce(reference, *flags) == 1
        assert message in capsys.readouterr().err, flags
    assert _reproduce(tmp_path / "none", "--resume") == 1
    assert "holds no reproduce to resume" in capsys.readouterr().err
    assert _reproduce(tmp_path / "gan", "--config", str(gan)) == 1
    assert "without the GAN term" in capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Path:
    out = tmp_path_factory.mktemp("jmvae")
    _train(out, tiny, "jmvae")
    return out / "final.safetensors"


@pytest.mark.parametrize(
    "kind, changes, difference",
    [
        ("vae", {"model": {"latent_dim": 4}}, "model latent_dim 4 vs 8"),
        ("cvae", {"model": {"image_sigma": 0.5}}, "σ 0.5 vs 0.1"),
        (
            "vae",
            {"model": {"image_likelihood": "gaussian-learned"}},
            "image likelihood gaussian-learned vs gaussian-fixed",
        ),
        ("cvae", {"preprocessing": {"crop": "aligned"}}, "preprocessing crop aligned vs detector"),
        ("vae", {"synthetic": {"n_train": 150}}, "training data content key"),
    ],
)
def test_eval_refuses_a_baseline_that_is_not_like_with_like(
    kind: str, changes: dict, difference: str, checkpoint: Path, tiny: Path, tmp_path: Path, capsys
) -> None:
    config = write_tiny_run(tmp_path / "other.toml", {"synthetic": {"n_train": 100}}, changes)
    _train(tmp_path / kind, config, kind)
    argv = ["eval", "--checkpoint", str(checkpoint), "--data", "synthetic", *EVAL, "--no-progress"]
    argv += ["--out", str(tmp_path / "report"), f"--{kind}", str(tmp_path / kind / "final.safetensors")]
    capsys.readouterr()
    assert main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "is not like with like with" in line and difference in line and "--allow-mismatch" in line
    assert not (tmp_path / "report").exists()
    assert main([*argv, "--allow-mismatch"]) == 0
    assert difference in json.loads(capsys.readouterr().out)["mismatches"][kind]
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert difference in metrics["mismatches"][kind] and not unknown(metrics)
    report = (tmp_path / "report" / "report.md").read_text()
    row = "| VAE (**not like with like**: " if kind == "vae" else "| CVAE (**not like with like**: "
    assert row in report and difference in report.split(row)[1].splitlines()[0]
    assert "do not compare with JMVAE-kl's" in report
