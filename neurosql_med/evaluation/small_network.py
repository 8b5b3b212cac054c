"""How the evaluation fits its small networks: the C2ST classifier, the covariate predictor,
the label-agreement segmenter and the utility benchmark's downstream networks.

One seeded Adam loop for all of them. The initial weights and every random draw made
while training (augmentation) come from ``seed`` inside a forked RNG, so the caller's
random state is untouched, and the batch order comes from its own generator seeded
alike: the same data and seed give the same network, whatever ran before.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from rich.progress import track
from torch import Tensor, nn

Loss = Callable[[Tensor, Tensor], Tensor]  # (network output, targets) -> scalar loss
Batches = Callable[[torch.Generator], Iterable[tuple[Tensor, Tensor]]]  # order -> (inputs, targets) batches


@dataclass(frozen=True)
class Schedule:
    """Adam at ``lr`` over ``epochs`` shuffled passes in batches of ``batch_size``."""

    epochs: int
    batch_size: int
    lr: float

    def passes(self, x: Tensor, y: Tensor, progress: str | None = None) -> Batches:
        """(inputs, targets) batches of ``epochs`` shuffled passes over ``x`` and ``y``; ``progress``: a transient bar's title."""
        def draw(order: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
            epochs = range(self.epochs)
            for _ in epochs if progress is None else track(epochs, description=progress, transient=True):
                for batch in torch.randperm(len(x), generator=order).split(self.batch_size):
                    yield x[batch], y[batch]
        return draw


def train_small_network(build: Callable[[], nn.Module], loss: Loss, batches: Batches, *, lr: float, seed: int) -> nn.Module:
    """The network ``build`` makes, fitted by Adam at ``lr`` to ``batches``, everything seeded by ``seed``; in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build()
        optimiser = torch.optim.Adam(net.parameters(), lr=lr)
        for x, y in batches(torch.Generator().manual_seed(seed)):
            optimiser.zero_grad()
            loss(net(x), y).backward()
            optimiser.step()
    return net.eval()
