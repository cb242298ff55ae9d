"""An exponential moving average of a model's weights, the model that validation measures and checkpoints serve."""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """A frozen copy of `model` whose floating-point parameters and buffers (batch-norm statistics too) follow
    `model`'s as avg ← decay·avg + (1 − decay)·live at each update(), after each optimiser step.

    One foreach kernel per update and nothing read back to the host: torch.optim.swa_utils.AveragedModel reads its
    step count back at every update, a GPU sync per step that the training loop otherwise avoids. The pairs of
    tensors are found once: the optimiser and load_state_dict change the live tensors in place."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        averaged, live = self.module.state_dict(), model.state_dict()  # detached views of each module's storage
        floats = {name for name, tensor in live.items() if tensor.is_floating_point()}
        self._floats = ([averaged[n] for n in live if n in floats], [live[n] for n in live if n in floats])
        # Batch norm's step counts are copied, not averaged.
        self._counts = [(averaged[n], live[n]) for n in live if n not in floats]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(*self._floats, 1.0 - self.decay)
        for mine, theirs in self._counts:
            mine.copy_(theirs)
