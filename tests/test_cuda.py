"""On a CUDA GPU (skipped without one): training and exact resume, DDP over NCCL under torchrun, `jmvae eval --out`,
and the service answering every endpoint within the stated tolerance of the same checkpoint on the CPU."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from service_support import image_bytes, running_server
from test_forward import GREY_LEVEL_TOLERANCE, PROBABILITY_TOLERANCE
from tiny_configs import write_tiny_run

from jmvae.cli import main
from jmvae.model.checkpoint import read_checkpoint
from jmvae.service.settings import Settings
from jmvae.training.synthetic import render_faces, sample_attributes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Six steps an epoch, logged every two, on the GPU.
RUN = {"device": "cuda", "log_every": 2, "synthetic": {"n_train": 300, "n_val": 100}}
# cuBLAS and cuDNN pick the same kernels every run only when asked: an exact resume needs both runs deterministic.
DETERMINISTIC = "import sys, torch; torch.use_deterministic_algorithms(True); from jmvae.cli import main; "


def _train(out: Path, config: Path, *extra: str) -> None:
    args = ["train", "--data", "synthetic", "--out", str(out), "--config", str(config), "--no-progress", *extra]
    env = os.environ | {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    code = DETERMINISTIC + f"sys.exit(main({args!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("cuda") / "cuda.toml", RUN)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, config: Path) -> Path:
    out = tmp_path_factory.mktemp("reference")
    _train(out, config, "--epochs", "2")
    return out / "final.safetensors"


def test_an_epoch_on_cuda_then_an_exact_resume(tmp_path: Path, config: Path, reference: Path) -> None:
    out = tmp_path / "run"
    _train(out, config, "--epochs", "1")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6]
    assert read_checkpoint(out / "last.safetensors").meta.training["device"] == "cuda"
    env = os.environ | {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    code = DETERMINISTIC + f"sys.exit(main({['train', '--out', str(out), '--resume', '--epochs', '2']!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, uninterrupted = (read_checkpoint(p).model_state for p in (out / "final.safetensors", reference))
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_ddp_over_nccl_under_torchrun_with_one_process(tmp_path: Path, config: Path) -> None:
    assert torch.distributed.is_nccl_available()
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "jmvae.cli"]
    cmd += ["train", "--data", "synthetic", "--out", str(out), "--config", str(config), "--epochs", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    train = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert train[-1]["step"] == 6 and all(r["processes"] == 1 for r in train)


def test_eval_out_on_cuda_matches_the_cpu(tmp_path: Path, reference: Path) -> None:
    """600 examples: three batches, the last one partial; the deterministic scores as on the CPU."""
    metrics = {}
    for device in ("cuda", "cpu"):
        args = ["eval", "--checkpoint", str(reference), "--data", "synthetic", "--split", "val", "--k", "2"]
        args += ["--nw", "2", "--max-examples", "600", "--device", device, "--out", str(tmp_path / device)]
        assert main([*args, "--no-progress"]) == 0
        metrics[device] = json.loads((tmp_path / device / "metrics.json").read_text())
    assert metrics["cuda"]["examples"] == 600
    for key, value in metrics["cpu"].items():
        if key.startswith(("attr_auc_kl/", "attr_acc_kl/")):
            assert abs(metrics["cuda"][key] - value) < 0.02, key
    for figure in ("fig1a_attribute_faces.png", "fig1b_latent_pca.png", "fig2_edit.png"):
        assert (tmp_path / "cuda" / figure).stat().st_size > 1000


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), np.int16)


def _answers(url: str, face: bytes) -> dict[str, httpx.Response]:
    upload = {"image": ("face.png", face, "image/png")}
    with httpx.Client(base_url=url, timeout=60) as client:
        return {
            "attributes": client.post("/attributes", files=upload),
            "generate": client.post("/generate", json={"attributes": {"Smiling": 2}, "n": 2, "seed": 5}),
            "generate_many": client.post("/generate", json={"attributes": {"Male": -1}, "n": 16, "seed": 6}),
            "edit": client.post("/edit", files=upload, data={"changes": json.dumps({"Smiling": 2})}),
            "model": client.get("/model"),
            "healthz": client.get("/healthz"),
            "readyz": client.get("/readyz"),
            "metrics": client.get("/metrics"),
        }


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_service_on_cuda_answers_every_endpoint_like_the_cpu(precision: str) -> None:
    """The shipped checkpoint served on CUDA (pinned copies, CUDA graphs per bucket, the precision asked for) and on
    the CPU in fp32: every endpoint answers, within the tolerance JMVAE_PRECISION states."""
    rng = np.random.default_rng(0)
    face = image_bytes(render_faces(sample_attributes(1, rng), rng, image_size=128)[0])
    with running_server(Settings(device="cuda", precision=precision)) as url:
        cuda = _answers(url, face)
    with running_server(Settings(device="cpu")) as url:
        cpu = _answers(url, face)
    for name, response in cuda.items():
        assert response.status_code == 200, (name, response.text[:300])
    assert cuda["model"].json()["device"].startswith("cuda")
    a, b = cuda["attributes"].json(), cpu["attributes"].json()
    assert a["box"] == b["box"]
    assert max(abs(a["probabilities"][n] - p) for n, p in b["probabilities"].items()) <= PROBABILITY_TOLERANCE
    for path, keys in (("generate", ("average_face",)), ("generate_many", ("average_face",))):
        g, h = cuda[path].json(), cpu[path].json()
        pairs = [(g[k], h[k]) for k in keys] + list(zip(g["faces"], h["faces"], strict=True))
        for x, y in pairs:
            assert np.abs(_pixels(x) - _pixels(y)).max() <= GREY_LEVEL_TOLERANCE, path
    e, f = cuda["edit"].json(), cpu["edit"].json()
    # x_mean decodes the attributes read at p ≥ 0.5: one near 0.5 may read otherwise within the tolerance.
    flipped = [n for n in f["attributes"] if e["attributes"][n] != f["attributes"][n]]
    assert all(abs(f["probabilities"][n] - 0.5) <= PROBABILITY_TOLERANCE for n in flipped), flipped
    for key in ("x_mean", "x_prime_mean") if not flipped else ():
        assert np.abs(_pixels(e[key]) - _pixels(f[key])).max() <= GREY_LEVEL_TOLERANCE, key
