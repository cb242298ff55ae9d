"""The training loop: data resident on the device, bf16 autocast on CUDA, DDP under torchrun, exact resume."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from jmvae.model.baselines import create_model
from jmvae.model.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMeta,
    now_iso,
    package_version,
    read_checkpoint,
    save_checkpoint,
)
from jmvae.model.gan import Discriminator, discriminator_loss, generator_terms
from jmvae.model.jmvae import TERM_NAMES
from jmvae.model.preprocess import normalise

from .augment import augment
from .average import WeightAverage
from .config import CONFIG_FILE, TrainConfig
from .data import FaceDataset
from .distributed import DistContext, any_rank, barrier
from .evaluate import evaluate
from .metrics import LIVE as LIVE_METRIC

LAST = "last.safetensors"
FINAL = "final.safetensors"
METRICS = "metrics.jsonl"
LIVE = "live."  # training-state prefix of the live weights when the checkpoint holds their average


class TrainingInterrupted(Exception):
    """Raised after a signal stopped training and the state was saved to last.safetensors."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; state saved, continue with --resume")
        self.signum = signum


def step_seed(seed: int, rank: int, step: int) -> int:
    """The noise of step `step` on `rank`: a pure function of the position, so a resumed run draws the same
    noise as an uninterrupted one without saving generator state."""
    return ((seed * 1_000_003 + rank) * 10_000_019 + step) & 0x7FFF_FFFF_FFFF_FFFF


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    if config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return config.lr


def kl_weight(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """β of the prior KL: linear from 0 to 1 over warmup_epochs, then 1."""
    if config.warmup_epochs == 0:
        return 1.0
    return min(1.0, step / (steps_per_epoch * config.warmup_epochs))


def _optimizer_to_checkpoint(
    optimizer: torch.optim.Optimizer, prefix: str = "optimizer"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


# How a param group's update is computed, not what it computes: the running optimiser's own, whatever the
# checkpoint's optimiser used (a checkpoint of the per-parameter loop resumes with the fused kernel).
_IMPLEMENTATION = ("foreach", "fused", "capturable", "differentiable")


def adam(parameters: Iterator[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam as one fused kernel over all parameters (CPU and CUDA) instead of a Python loop of elementwise ops per
    parameter, the optimiser's share of a step in the profile of docs/benchmarks.md."""
    return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=True)


def _optimizer_from_checkpoint(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    saved: dict[str, Any],
    prefix: str = "optimizer",
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith(f"{prefix}."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entries in saved["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [
        group | {key: live[key] for key in _IMPLEMENTATION if key in live}
        for group, live in zip(saved["param_groups"], optimizer.param_groups, strict=True)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # Checkpoints hold tensors in the default layout, and the weights are channels-last. The fused and foreach
    # kernels pair a parameter with its moments element by element in memory order, so each moment takes its
    # parameter's strides again, or a resumed run would update the wrong entries.
    for parameter, entries in optimizer.state.items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                entries[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to save and stop at the end of the current step; a second one forces exit."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    flag = _StopFlag()
    previous = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Window:
    """The logged terms of the steps since the last log point, summed on the device, and the wall time since."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def __len__(self) -> int:
        return self.steps

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps += 1

    def means(self) -> dict[str, float]:
        """Per-step means by metric name: one read back to the host, which waits for every queued step."""
        names = list(TERM_NAMES) + [name for name in self.sums if name != "terms"]
        parts = [self.sums["terms"]] + [self.sums[name].reshape(1) for name in names[len(TERM_NAMES) :]]
        return {name: value / self.steps for name, value in zip(names, torch.cat(parts).tolist(), strict=True)}

    def seconds(self) -> float:
        """Since the window began; after means(), so that it counts the device's work, not only its queueing."""
        return time.perf_counter() - self.started


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        dataset: FaceDataset,
        device: torch.device,
        ctx: DistContext | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        self.device = device
        self.ctx = ctx or DistContext()
        if config.batch_size % self.ctx.world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {self.ctx.world_size} processes")
        if tuple(dataset.attribute_names) and len(dataset.attribute_names) != config.model.n_attributes:
            raise ValueError(
                f"the data has {len(dataset.attribute_names)} attributes, the model {config.model.n_attributes}"
            )
        train = dataset.split("train")
        if len(train) < 2:
            raise ValueError(f"the training split of {dataset.name} has {len(train)} images; need at least 2")
        if train.images.shape[1] != config.model.image_size:
            raise ValueError(f"images are {train.images.shape[1]} px, the model expects {config.model.image_size}")
        # Kept on the device as uint8 (2.5 GB for all of CelebA): batches are gathered there, no loader workers.
        self.images = torch.from_numpy(np.array(train.images)).to(device)  # a copy: the cache is read-only
        self.attributes = torch.from_numpy(train.attributes).to(device).float()
        self.prevalence = (train.attributes > 0).mean(axis=0)
        self.steps_per_epoch = max(1, len(train) // config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.local_batch = min(config.batch_size, len(train)) // self.ctx.world_size
        self.autocast = self._autocast_dtype()

        torch.manual_seed(config.seed)
        # channels_last: the layout oneDNN's and cuDNN's fastest convolutions use, so they skip reordering every
        # activation (restored Adam moments take the same layout: _optimizer_from_checkpoint).
        self.model = create_model(config.model).to(device, memory_format=torch.channels_last)
        self.optimizer = adam(self.model.parameters(), config.lr, config.adam_betas)
        self.average = WeightAverage(self.model, config.ema) if config.ema else None
        self.discriminator: Discriminator | None = None
        if config.gan is not None:
            # The adversarial pass reaches the decoder outside DDP's forward, which DDP cannot reduce correctly.
            if self.ctx.enabled:
                raise ValueError("--gan trains in one process; run it without torchrun")
            self.discriminator = Discriminator(config.model).to(device)
            self.d_optimizer = adam(self.discriminator.parameters(), config.gan.lr, config.gan.adam_betas)
        self.epoch = 0  # completed epochs
        self.step = 0  # optimiser steps taken
        self.metrics: dict[str, float] = {}

    def _autocast_dtype(self) -> torch.dtype | None:
        precision = self.config.precision
        if precision == "auto":
            # AMX (Intel Xeon since Sapphire Rapids) runs bf16 convolutions at over twice the fp32 speed.
            amx = self.device.type == "cpu" and torch.cpu._is_amx_tile_supported()
            precision = "bf16" if self.device.type == "cuda" or amx else "fp32"
        return torch.bfloat16 if precision == "bf16" else None

    # Checkpoints -----------------------------------------------------------------------------------------
    def _meta(self) -> CheckpointMeta:
        return CheckpointMeta(
            package_version=package_version(),
            created_at=now_iso(),
            model=self.config.model,
            attribute_names=self.dataset.attribute_names,
            preprocessing=self.config.preprocessing,
            alpha=self.config.alpha,
            training=self.config.model_dump(mode="json"),
            data=self.dataset.summary(),
            epoch=self.epoch,
            step=self.step,
            metrics=self.metrics,
        )

    def save(self, name: str, with_state: bool) -> Path:
        path = self.run_dir / name
        tensors: dict[str, torch.Tensor] = {}
        state_json: dict[str, Any] = {}
        if with_state:
            tensors, state_json = _optimizer_to_checkpoint(self.optimizer)
            state_json |= {"epoch": self.epoch, "step": self.step}
            if self.discriminator is not None:  # training state only: serving needs no discriminator
                d_tensors, state_json["discriminator"] = _optimizer_to_checkpoint(self.d_optimizer, "d_optimizer")
                tensors |= d_tensors | {f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()}
            if self.average is not None:  # the checkpoint's model is the average; training goes on from these
                tensors |= {f"{LIVE}{k}": v for k, v in self.model.state_dict().items()}
        save_checkpoint(path, Checkpoint(self._meta(), self.served.state_dict(), tensors, state_json))
        return path

    @property
    def served(self) -> torch.nn.Module:
        """The weights that validation measures and checkpoints hold: the moving average, with one."""
        return self.average.module if self.average is not None else self.model

    def restore(self) -> None:
        path = self.run_dir / LAST
        checkpoint = read_checkpoint(path, self.device)
        if not checkpoint.state_json:
            raise CheckpointError(f"{path}: has no training state to resume from")
        saved_key = checkpoint.meta.data.get("content_key")
        if saved_key != self.dataset.content_key:
            raise CheckpointError(f"{path}: was trained on other data (content key {saved_key})")
        live = {k.removeprefix(LIVE): v for k, v in checkpoint.state_tensors.items() if k.startswith(LIVE)}
        if bool(live) != (self.average is not None):
            raise CheckpointError(f"{path}: was trained {'with' if live else 'without'} ema; resume it the same way")
        self.served.load_state_dict(checkpoint.model_state)
        if live:
            self.model.load_state_dict(live)
        _optimizer_from_checkpoint(self.optimizer, checkpoint.state_tensors, checkpoint.state_json)
        if self.discriminator is not None:
            self.discriminator.load_state_dict(
                {
                    k.removeprefix("discriminator."): v
                    for k, v in checkpoint.state_tensors.items()
                    if k.startswith("discriminator.")
                }
            )
            _optimizer_from_checkpoint(
                self.d_optimizer, checkpoint.state_tensors, checkpoint.state_json["discriminator"], "d_optimizer"
            )
        self.epoch = checkpoint.state_json["epoch"]
        self.step = checkpoint.state_json["step"]
        self.metrics = dict(checkpoint.meta.metrics)

    # Logging ---------------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with open(self.run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    # The loop --------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, on_epoch: Callable[[Trainer], None] | None = None) -> Path:
        """Train to config.epochs; returns the final checkpoint. Raises TrainingInterrupted after a signal.
        `on_epoch` is called after each epoch's checkpoint is saved (jmvae reproduce's progress)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.restore()
        if self.ctx.is_main:
            (self.run_dir / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2) + "\n")
        model: torch.nn.Module = self.model
        if self.ctx.enabled:
            # With α = 0 the unimodal encoders take no part in the loss, and DDP must be told.
            model = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.config.alpha == 0,
            )
        if self.config.compile:
            model = torch.compile(model)
        with _stop_on_signals() as stop:
            while self.epoch < self.config.epochs:
                if self._train_epoch(model, stop):
                    if self.ctx.is_main:
                        self.save(LAST, with_state=True)
                    barrier(self.ctx)
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM)
                self.epoch += 1
                self._validate()
                if self.ctx.is_main:
                    self.save(LAST, with_state=True)
                barrier(self.ctx)
                if on_epoch is not None:
                    on_epoch(self)
        final = self.run_dir / FINAL
        if self.ctx.is_main:
            self.save(FINAL, with_state=False)
        barrier(self.ctx)
        return final

    def _train_epoch(self, model: torch.nn.Module, stop: _StopFlag) -> bool:
        """Runs the rest of the current epoch; True when a signal stopped it (after a whole step).

        Nothing is read back from the device between log points (each read is a GPU sync that stalls the queue of
        kernels): the loss terms are summed there, and the finiteness check, the progress bar and, under torchrun,
        the stop flag's all-reduce wait for the next log point."""
        config, ctx = self.config, self.ctx
        # The epoch's order depends only on (seed, epoch): every rank agrees, and a resumed run repeats it.
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(config.seed + self.epoch))
        order = order.to(self.device)
        first = self.step - self.epoch * self.steps_per_epoch
        generator = torch.Generator(device=self.device)
        model.train()
        if self.discriminator is not None:
            self.discriminator.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=first,
            desc=f"epoch {self.epoch + 1}/{config.epochs}",
            disable=not (config.progress and ctx.is_main),
            dynamic_ncols=True,
            leave=False,
        )
        window = _Window()
        for index in range(first, self.steps_per_epoch):
            batch = order[index * config.batch_size : (index + 1) * config.batch_size]
            batch = batch[ctx.rank * self.local_batch : (ctx.rank + 1) * self.local_batch]
            beta = kl_weight(config, self.step, self.steps_per_epoch)
            window.add(self._train_step(model, batch, beta, generator))
            self.step += 1
            at_log_point = len(window) == config.log_every or index == self.steps_per_epoch - 1
            if at_log_point:
                record = window.means()  # the one read back to the host since the last log point
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(
                        f"loss became {record['loss']} within steps {self.step - len(window) + 1}-{self.step}; "
                        "lower --lr?"
                    )
                record |= {
                    "beta": beta,
                    "lr": learning_rate(config, self.step - 1, self.total_steps),
                    "images_per_s": len(window) * config.batch_size / window.seconds(),
                    "processes": ctx.world_size,
                }
                bar.update(len(window))
                bar.set_postfix(
                    {k: f"{record[k]:.4g}" for k in ("loss", "log_px", "log_pw", "kl_prior", "images_per_s")}
                )
                self._log({"kind": "train", "epoch": self.epoch + 1, "step": self.step} | record)
                window = _Window()
            # One process reads its own flag at every step for free; ranks must agree, at the cost of an all-reduce.
            if (at_log_point or not ctx.enabled) and any_rank(stop.signum is not None, ctx, self.device):
                bar.close()
                return True
        bar.close()
        return False

    def _train_step(
        self, model: torch.nn.Module, batch: torch.Tensor, beta: float, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """One optimiser step (and the discriminator's, with --gan) on the examples `batch` indexes; returns the
        step's logged terms as detached tensors on the device."""
        config = self.config
        x = normalise(self.images[batch]).contiguous(memory_format=torch.channels_last)
        w = self.attributes[batch]
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, self.step, self.total_steps)
        generator.manual_seed(step_seed(config.seed, self.ctx.rank, self.step))
        x = augment(
            x,
            generator,
            config.hflip,
            config.shift,
            config.jitter_scale,
            config.jitter_shift,
            config.rotate,
            config.colour,
        )
        autocast = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else nullcontext()
        with autocast:
            terms = model(x, w, alpha=config.alpha, beta=beta, generator=generator)
            adversarial = (
                generator_terms(self.model, self.discriminator, w, generator)
                if self.discriminator is not None
                else None
            )
        loss = terms.loss
        if adversarial is not None and config.gan is not None:
            loss = loss + config.gan.weight * adversarial.generator_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update()
        values = {"terms": terms.as_tensor()}
        if adversarial is not None:
            values |= {"g_adv": adversarial.generator_loss.detach().float()}
            values |= self._discriminator_step(x, adversarial.fakes.detach(), autocast)
        return values

    def _discriminator_step(self, real: torch.Tensor, fakes: torch.Tensor, autocast: Any) -> dict[str, torch.Tensor]:
        assert self.discriminator is not None
        with autocast:
            loss, logs = discriminator_loss(self.discriminator, real, fakes)
        self.d_optimizer.zero_grad(set_to_none=True)  # also drops what the decoder's adversarial loss left here
        loss.backward()
        self.d_optimizer.step()
        return {name: value.float() for name, value in logs.items()}

    def _validate(self) -> None:
        val = self.dataset.split("val")
        if not self.ctx.is_main or not len(val):
            return
        started = time.perf_counter()
        config = self.config
        measure = partial(
            evaluate,
            split=val,
            train_prevalence=self.prevalence,
            alpha=config.alpha,
            k=config.val_k,
            n_w=config.val_n_w,
            max_examples=config.val_max_examples,
            seed=config.seed,
        )
        self.metrics = measure(self.served)
        if self.average is not None:  # what the average adds, epoch by epoch
            self.metrics |= {f"{LIVE_METRIC}{name}": value for name, value in measure(self.model).items()}
        self._log(
            {"kind": "val", "epoch": self.epoch, "step": self.step, "seconds": time.perf_counter() - started}
            | self.metrics
        )
        if self.config.progress:
            tqdm.write(
                f"epoch {self.epoch}: "
                + ", ".join(
                    f"{k}={v:.4g}"
                    for k, v in self.metrics.items()
                    if k
                    in (
                        "elbo",
                        "log_pxw",
                        "log_px_single",
                        "attr_acc_kl",
                        "attr_auc_kl",
                        "attr_auc_classifier",
                        "attr_acc_majority",
                    )
                )
            )
