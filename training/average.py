"""An exponential moving average of a model's weights, the model that validation measures and checkpoints serve."""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """A frozen copy of `model` whose floating-point parameters and buffers (batch-norm statistics too) follow the
    live ones as avg ← decay·avg + (1 − decay)·live after each optimiser step.

    One foreach kernel per update and nothing read back to the host: torch.optim.swa_utils.AveragedModel reads its
    step count back at every update, a GPU sync per step that the training loop otherwise avoids."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        averaged = self.module.state_dict()  # detached views of the module's own storage
        live = model.state_dict()
        floats = [name for name, tensor in live.items() if tensor.is_floating_point()]
        torch._foreach_lerp_([averaged[n] for n in floats], [live[n] for n in floats], 1.0 - self.decay)
        for name in live.keys() - set(floats):
            averaged[name].copy_(live[name])  # batch norm's step counts are not averages
