"""MultiVae's JMVAE on our networks: the peer side of bench/train_speed.py, run in bench/.venv-multivae.

MultiVae trains with its own BaseTrainer (DataLoader over a MultimodalBaseDataset, fp32, `train_step` per epoch);
only the networks are ours: the MultiVae encoder/decoder classes below wrap the modules of a jmvae JMVAE, so both
trainers optimise exactly the same architecture, and a snapshot of that JMVAE is MultiVae's trained model in a form
our bounds code evaluates. The data comes as .npy files written by train_speed.py.

A worker driven over stdin/stdout, one JSON object per line, so that train_speed.py can alternate epochs between the
two trainers (on a shared machine, a change of load then falls on both). After a first line describing itself, it
answers each request:
    {"cmd": "epoch"}                   → {"epoch", "seconds", "gpu_utilisation_percent"}
    {"cmd": "snapshot", "path": P}     → {"path"}: the weights as our JMVAE's state dict, in an .npz file
    {"cmd": "own_log_pxw", "k": K}     → {"own_log_pxw"}: MultiVae's compute_joint_nll on the validation images
                                         (moves the model to the CPU: the last request of a run)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from gpu_sampler import GpuUtilisation
from multivae.data.datasets.base import MultimodalBaseDataset
from multivae.models import JMVAE, JMVAEConfig
from multivae.models.nn import BaseJointEncoder
from multivae.trainers import BaseTrainer, BaseTrainerConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder
from torch import nn

from jmvae.model.config import ModelConfig
from jmvae.model.jmvae import JMVAE as OurJMVAE

IMAGE, ATTRIBUTES = "image", "attributes"


def celeba_coding(present: torch.Tensor) -> torch.Tensor:
    """MultiVae's Bernoulli likelihood needs targets in {0, 1} and feeds the encoders the same tensor; our
    networks take CelebA's -1/1 coding, so the encoder wrappers convert back (one cheap elementwise op)."""
    return present * 2.0 - 1.0


class Encoder(BaseEncoder):
    """q(z|x) or q(z|w): one of our unimodal encoders, returning what MultiVae expects."""

    def __init__(self, net: nn.Module, attributes: bool) -> None:
        BaseEncoder.__init__(self)
        self.net, self.attributes = net, attributes

    def forward(self, x: torch.Tensor) -> ModelOutput:
        q = self.net(celeba_coding(x) if self.attributes else x)
        return ModelOutput(embedding=q.mean, log_covariance=q.logvar)


class JointEncoder(BaseJointEncoder):
    def __init__(self, net: nn.Module, latent_dim: int) -> None:
        BaseJointEncoder.__init__(self)
        self.net, self.latent_dim = net, latent_dim

    def forward(self, x: dict[str, torch.Tensor]) -> ModelOutput:
        q = self.net(x[IMAGE], celeba_coding(x[ATTRIBUTES]))
        return ModelOutput(embedding=q.mean, log_covariance=q.logvar)


class Decoder(BaseDecoder):
    """p(x|z) (the Gaussian's mean) or p(w|z) (Bernoulli logits)."""

    def __init__(self, net: nn.Module) -> None:
        BaseDecoder.__init__(self)
        self.net = net

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=self.net(z))


def build(config: ModelConfig, alpha: float, warmup: int, seed: int) -> tuple[JMVAE, OurJMVAE]:
    torch.manual_seed(seed)  # as our Trainer does before building its model: both start from the same weights
    ours = OurJMVAE(config)
    size = config.image_size
    mv_config = JMVAEConfig(
        n_modalities=2,
        latent_dim=config.latent_dim,
        input_dims={IMAGE: (3, size, size), ATTRIBUTES: (config.n_attributes,)},
        decoders_dist={IMAGE: "normal", ATTRIBUTES: "bernoulli"},
        decoder_dist_params={IMAGE: {"scale": config.image_sigma}},  # our fixed-σ Gaussian p(x|z)
        alpha=alpha,
        warmup=warmup,
        beta=1.0,
    )
    model = JMVAE(
        mv_config,
        encoders={IMAGE: Encoder(ours.image_encoder, False), ATTRIBUTES: Encoder(ours.attribute_encoder, True)},
        decoders={IMAGE: Decoder(ours.image_decoder), ATTRIBUTES: Decoder(ours.attribute_decoder)},
        joint_encoder=JointEncoder(ours.joint_encoder, config.latent_dim),
    )
    return model, ours


def load_split(data: Path, split: str) -> MultimodalBaseDataset:
    images = torch.from_numpy(np.load(data / f"{split}_images.npy"))
    attributes = torch.from_numpy(np.load(data / f"{split}_attributes.npy"))
    return MultimodalBaseDataset(
        {
            IMAGE: images.permute(0, 3, 1, 2).float().div(255.0).contiguous(),  # (N, S, S, 3) uint8 → [0, 1]
            ATTRIBUTES: (attributes > 0).float(),
        }
    )


class Worker:
    def __init__(self, args: argparse.Namespace, output_dir: str) -> None:
        self.device, self.data = args.device, args.data
        self.model, self.ours = build(
            ModelConfig.model_validate_json(args.model_config), args.alpha, args.warmup, args.seed
        )
        start = time.perf_counter()
        self.trainer = BaseTrainer(
            self.model,
            load_split(args.data, "train"),
            training_config=BaseTrainerConfig(
                output_dir=output_dir,
                per_device_train_batch_size=args.batch_size,
                learning_rate=args.lr,
                num_epochs=10**6,
                seed=args.seed,
                no_cuda=args.device == "cpu",
                drop_last=True,  # as our trainer: every step a full batch
            ),
        )
        self.epoch = 0
        self.info = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "images_per_epoch": len(self.trainer.train_loader) * args.batch_size,
            "setup_seconds": time.perf_counter() - start,
        }

    def train_epoch(self) -> dict[str, Any]:
        self.epoch += 1
        with GpuUtilisation() as gpu:
            start = time.perf_counter()
            self.trainer.train_step(self.epoch)  # MultiVae's epoch loop; its warm-up counts epochs from 1
            if self.device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        self.trainer.callback_handler.on_epoch_end(training_config=self.trainer.training_config)  # closes its bar
        return {"epoch": self.epoch, "seconds": seconds, "gpu_utilisation_percent": gpu.mean}

    def snapshot(self, path: str) -> dict[str, Any]:
        np.savez(path, **{k: v.detach().cpu().numpy() for k, v in self.ours.state_dict().items()})
        return {"path": path}

    def own_log_pxw(self, k: int) -> dict[str, Any]:
        val = load_split(self.data, "val")
        # On the CPU: compute_joint_nll gathers per-example results with torch.Tensor(list), which wants CPU
        # tensors; and it builds a graph unless told not to.
        with torch.no_grad():
            nll = float(self.model.cpu().compute_joint_nll(val, K=k, batch_size_K=100))
        return {"own_log_pxw": -nll / len(val)}

    def serve(self, requests: TextIO, replies: TextIO) -> None:
        def reply(message: dict[str, Any]) -> None:
            replies.write(json.dumps(message) + "\n")
            replies.flush()

        reply(self.info)
        for line in requests:
            request = json.loads(line)
            match request["cmd"]:
                case "epoch":
                    reply(self.train_epoch())
                case "snapshot":
                    reply(self.snapshot(request["path"]))
                case "own_log_pxw":
                    reply(self.own_log_pxw(request["k"]))
                case other:
                    raise ValueError(f"unknown request {other!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of {train,val}_{images,attributes}.npy")
    parser.add_argument("--model-config", default="{}", help="ModelConfig as JSON (default: the paper's networks)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=2, help="MultiVae's warm-up, whole epochs")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Replies keep the real stdout to themselves; whatever else writes to it (MultiVae, C code) lands in stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    with tempfile.TemporaryDirectory() as output_dir:
        Worker(args, output_dir).serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
