"""Which weights samples come from: the trained ones, or their moving average (``train.ema`` > 0).

Both kinds answer the trainer's questions (update after a step, what the checkpoint holds,
what a resume restores, which generator the texture is fitted through), so the trainer
asks them the same way whichever the config chose.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor


class LiveWeights:
    """No average (``train.ema`` = 0): samples come from the trained weights themselves."""

    def update(self, generator: torch.nn.Module) -> None:
        """Nothing to follow."""

    def checkpoint(self) -> dict[str, Any]:
        return {}

    def resume(self, saved: dict[str, Any]) -> None:
        """Nothing saved to restore."""

    def sampled(self, generator: torch.nn.Module) -> torch.nn.Module:
        return generator


class MovingAverage:
    """ema ← decay · ema + (1 − decay) · weights after every step: samples come from an average of the last
    ~1/(1 − decay) steps, saved in model.pt as ``ema`` (which `io.model.load_model` prefers)."""

    def __init__(self, generator: torch.nn.Module, decay: float):
        self.decay = decay
        self.weights: dict[str, Tensor] = {k: v.detach().clone() for k, v in generator.state_dict().items()}

    @torch.no_grad()
    def update(self, generator: torch.nn.Module) -> None:
        for name, value in generator.state_dict().items():
            self.weights[name].lerp_(value, 1 - self.decay)

    def checkpoint(self) -> dict[str, Any]:
        return {"ema": {k: v.clone() for k, v in self.weights.items()}}

    def resume(self, saved: dict[str, Any]) -> None:
        self.weights = {k: v.clone() for k, v in saved["ema"].items()}

    def sampled(self, generator: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``generator`` holding the averaged weights."""
        averaged = copy.deepcopy(generator)
        averaged.load_state_dict(self.weights)
        return averaged


def weight_average(generator: torch.nn.Module, decay: float) -> LiveWeights | MovingAverage:
    """The average ``train.ema`` = ``decay`` asks for."""
    return MovingAverage(generator, decay) if decay else LiveWeights()
