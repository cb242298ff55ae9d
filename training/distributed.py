"""torch.distributed set-up for runs launched by torchrun (one process per GPU, or gloo processes on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # in a process group: DDP, collective stop flags and barriers

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment, also as a world of one (so that one GPU under
    torchrun runs the NCCL path of many); a plain launch is a world of one without a group."""
    if "WORLD_SIZE" not in os.environ:
        return DistContext()
    ctx = DistContext(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")), True
    )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=backend)
    return ctx


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank when the flag is set on any: ranks must agree to stop at the same step."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
