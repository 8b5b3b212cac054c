"""The generators NeuroSQL is compared with at an equal wall-clock budget: a VAE, a GAN and a DDPM.

They share one small interface, so the benchmark treats them (and NeuroSQL) alike:
``fit(images, budget_seconds, seed, device) -> {"epochs", "steps", "seconds"}`` trains from
scratch on (N, 1, *spatial) images in [0, 1] until the budget is spent, ``sample(n, seed)``
returns (n, 1, *spatial) images in [0, 1] on the CPU, ``parameter_count()`` counts what
was trained. Their learning rates follow engine.schedule's curve over the elapsed share of
the budget, not an epoch count, so each run anneals fully whatever the budget and the
machine's speed.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from neurosql_med.config import Config
from neurosql_med.engine.lattice import reference_draws
from neurosql_med.engine.decoder import Decoder, build_decoder
from neurosql_med.engine.schedule import warmup_cosine

BUDGET_WARMUP = 0.05  # share of the budget spent warming up


class Generative(Protocol):
    def fit(self, images: Tensor, budget_seconds: float, seed: int, device: torch.device) -> dict: ...

    def sample(self, n: int, seed: int) -> Tensor: ...

    def parameter_count(self) -> int: ...


def budget_lr(fraction: float) -> float:
    """Learning-rate factor at ``fraction`` of the budget: the NeuroSQL trainer's curve, on the clock."""
    return warmup_cosine(fraction, BUDGET_WARMUP, 1.0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def run_budgeted(step: Callable[[Tensor, float], None], n: int, batch_size: int, budget_seconds: float, seed: int) -> dict:
    """Call ``step(indices, elapsed fraction)`` on shuffled minibatches until the budget is spent.

    The clock is checked after every step, so a run overshoots by at most one minibatch.
    ``epochs`` counts passes over the data, fractional for the last one.
    """
    started = time.monotonic()
    order_gen = torch.Generator().manual_seed(seed)
    steps = seen = 0
    elapsed = 0.0
    while elapsed < budget_seconds:
        order = torch.randperm(n, generator=order_gen)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            step(idx, elapsed / budget_seconds)
            steps, seen = steps + 1, seen + len(idx)
            elapsed = time.monotonic() - started
            if elapsed >= budget_seconds:
                break
    return {"epochs": seen / n, "steps": steps, "seconds": elapsed}


class EMA:
    """Exponential moving average of a network's weights, which the baselines sample from.

    The decay grows as (1 + k) / (10 + k) up to ``decay``, so after the few hundred steps
    a CPU budget allows the average is not still dominated by the random initialisation.
    """

    def __init__(self, network: nn.Module, decay: float = 0.999):
        self.model = copy.deepcopy(network).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        self.updates += 1
        rate = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        for mine, theirs in zip(self.model.state_dict().values(), network.state_dict().values()):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs, rate)
            else:
                mine.copy_(theirs)


def neurosql_decoder(cfg: Config, images: Tensor, device: torch.device) -> Decoder:
    """NeuroSQL's generator for ``images``, started like NeuroSQL's from their mean: the VAE's and GAN's decoder."""
    decoder = build_decoder(cfg.model, images.shape[2:]).to(device)
    decoder.init_template(images)
    return decoder


def count_parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def latent_draws(n: int, d: int, seed: int) -> Tensor:
    """N(0, I_d) codes: exactly those NeuroSQL decodes for the same ``seed``, so samples pair up."""
    z, _ = reference_draws(np.arange(n), d, "gaussian", seed)
    return torch.as_tensor(z, dtype=torch.float32)
