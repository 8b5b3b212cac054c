"""The assignment step: which lattice point codes which image.

For a fixed generator the best codes solve a linear assignment problem on
C[i, j] = loss(G(u_j), x_i), the discrete optimal transport between the images and the
lattice. It is solved exactly (Jonker-Volgenant via ``lap``), in random blocks when n is
too large for one dense n x n problem; then only each block's rows x columns costs are
ever computed, so memory is bounded by the block, not by n^2. An ``AssignmentProblem``
holds what a step matches; ``assign`` solves it densely, in blocks, or across the
processes of a torchrun job (its ``shard``), with one loop over blocks for all three.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Protocol

import lap
import numpy as np
import torch
from scipy.spatial.distance import cdist
from torch import Tensor

from neurosql_med.config import AssignmentConfig
from neurosql_med.engine.lattice import to_gaussian
from neurosql_med.engine.losses import ReconstructionLoss, pairwise_label_loss, pairwise_laplacian, pairwise_mse
from neurosql_med.engine.stacks import group_scores

# "auto" cost: the full loss while images x lattice points x voxels stays below this, which
# keeps a round near 1-1.5 s on one CPU thread; squared error above it (docs/decisions.md).
LOSS_COST_LIMIT = 1 << 26
# "auto" cost of a loss with a Laplacian-pyramid term, above LOSS_COST_LIMIT: the pyramid L1 alone (one
# torch.cdist over 1.33 x the voxels, no SSIM: ~1.7 ns per pair-voxel on one CPU thread, so ~1.8 s at the
# limit) while images x lattice points x voxels stays below this; 64x80 slices: n <= 457.
PYRAMID_COST_LIMIT = 1 << 30
# Rows of a block whose costs are computed at once: bounds the temporaries of the matrix
# products (a chunk of images against the block's decoded lattice points).
COST_ROW_CHUNK = 2048

BlockCost = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (rows, columns) -> their costs


@dataclass
class AssignResult:
    perm: np.ndarray  # perm[i] = lattice index coding image i
    changed_fraction: float  # share of images whose code changed; 1.0 on the first step
    total_cost: float
    blocked: bool  # solved in blocks, hence optimal only within each block
    timings: dict[str, float]  # seconds: "forward", "cost", "lap"


def solve_assignment(
    cost: np.ndarray, block_size: int = 16384, seed: int = 0, previous: np.ndarray | None = None
) -> tuple[np.ndarray, bool]:
    """Exact minimum-cost permutation, perm[i] = column of row i; also whether it was blocked.

    Above ``block_size`` rows, a dense LAP costs O(n^2) memory and up to O(n^3) time, so
    rows are split into seeded random blocks, each solved exactly against the columns of
    the same indices, or, given ``previous``, against the rows' current columns: then the
    previous assignment is feasible in every block and the total cost can only go down.
    """
    cost = np.asarray(cost, dtype=np.float64)
    n = cost.shape[0]
    if cost.ndim != 2 or cost.shape[1] != n:
        raise ValueError(f"assignment needs a square cost matrix, got shape {cost.shape}")
    cost = checked_costs(cost)
    if n <= block_size:
        return _lapjv(cost), False
    return solve_blocks(n, lambda rows, columns: cost[np.ix_(rows, columns)], block_size, seed, previous), True


def assignment_blocks(
    n: int, block_size: int, seed: int, previous: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (rows, columns) of each block: seeded random rows, against the same indices or their ``previous`` columns."""
    order = np.random.default_rng(seed).permutation(n)
    columns_of = np.arange(n) if previous is None else np.asarray(previous)
    return [(rows, columns_of[rows]) for rows in np.array_split(order, math.ceil(n / block_size))]


def solve_blocks(
    n: int, block_cost: BlockCost, block_size: int, seed: int = 0, previous: np.ndarray | None = None
) -> np.ndarray:
    """The blocked permutation, asking ``block_cost`` only for each block's rows x columns (never n x n)."""
    perm = np.empty(n, dtype=np.int64)
    for rows, columns in assignment_blocks(n, block_size, seed, previous):
        perm[rows] = columns[_lapjv(checked_costs(block_cost(rows, columns)))]
    return perm


def checked_costs(cost: np.ndarray) -> np.ndarray:
    """``cost`` as float64 for the LAP, refused when training diverged into NaN or infinity."""
    cost = np.asarray(cost, dtype=np.float64)
    if not np.isfinite(cost).all():
        raise ValueError("assignment cost matrix has NaN or infinite entries (did training diverge?)")
    return cost


def pca_codes(images: Tensor, d: int) -> np.ndarray:
    """First d principal component scores of the flattened images, each with unit std.

    Components beyond the rank of the centred data are zeros. Randomised PCA
    (``torch.pca_lowrank``, fixed seed) keeps this O(n * voxels * d) for large cohorts.
    """
    x = images.detach().reshape(len(images), -1).float().cpu()
    n = x.shape[0]
    q = min(d + 10, *x.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        u, s, _ = torch.pca_lowrank(x, q=q, center=True, niter=4)
    keep = s > s[0] * 1e-5 if n > 1 else torch.zeros_like(s, dtype=torch.bool)
    codes = np.zeros((n, d))
    width = min(d, q)
    codes[:, :width] = (u[:, :width] * keep[:width] * math.sqrt(max(n - 1, 1))).double().numpy()
    return codes


def initial_assignment(
    images: Tensor, lattice: np.ndarray, kind: str = "gaussian", block_size: int = 16384, seed: int = 0,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Initial codes: OT between standardised PCA scores and the lattice (squared distance).

    A uniform lattice is compared through its Gaussian copula, on the scale of the scores.
    With ``groups`` (each image's group, 0..m-1, m lattice points) a group is coded by the
    mean of its images' scores (engine/stacks.py: the slices of one scan share a code).
    """
    points = to_gaussian(lattice, kind)
    codes = pca_codes(images, points.shape[1])
    if groups is not None:
        codes = group_scores(codes, groups)
    if len(codes) > block_size:
        return solve_blocks(len(codes), lambda r, c: cdist(codes[r], points[c], "sqeuclidean"), block_size, seed)
    return solve_assignment(cdist(codes, points, "sqeuclidean"), block_size, seed)[0]


def cost_matrix(
    generator: torch.nn.Module,
    lattice: Tensor,
    images: Tensor,
    loss: ReconstructionLoss,
    cost: str,
    batch_size: int,
    device: torch.device | str,
    labels: Tensor | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """C[i, j] = loss(G(u_j), (x_i, y_i)) as float64, and the seconds spent decoding and comparing.

    Holds the n decoded lattice points but never n x n images. ``cost``: "loss" (the
    training loss), "mse" (squared error via matrix products) or "auto" (LOSS_COST_LIMIT);
    either way, with ``labels`` y the label term of the loss is added (matrix products too).
    """
    cost = cost_kind(cost, len(images), images[0].numel(), loss.laplacian_weight > 0)
    start = time.perf_counter()
    outputs = decode(generator, lattice, batch_size, device)
    decoded = time.perf_counter()
    matrix = pair_costs(outputs, images.to(device), loss, cost, None if labels is None else labels.to(device))
    return matrix.double().cpu().numpy(), {"forward": decoded - start, "cost": time.perf_counter() - decoded}


def cost_kind(cost: str, n: int, voxels: int, multiscale: bool = False) -> str:
    """"loss", "pyramid" or "mse".

    "auto" is the training loss while n x n x voxels stays below LOSS_COST_LIMIT; above
    it, a ``multiscale`` loss (one with a Laplacian-pyramid term) keeps that term up to
    PYRAMID_COST_LIMIT, and squared error takes over after that.
    """
    if cost == "auto":
        size = n * n * voxels
        if size < LOSS_COST_LIMIT:
            return "loss"
        return "pyramid" if multiscale and size < PYRAMID_COST_LIMIT else "mse"
    if cost not in ("loss", "pyramid", "mse"):
        raise ValueError(f"unknown assignment cost {cost!r}")
    return cost


def pair_costs(outputs: Tensor, images: Tensor, loss: ReconstructionLoss, kind: str, labels: Tensor | None = None) -> Tensor:
    """Float32 costs of every (image i, decoded output j) pair, on the tensors' device; ``kind`` as `cost_kind`'s."""
    with torch.no_grad():
        if kind == "loss":
            matrix = loss.pairwise(outputs[:, :1], images)
        elif kind == "pyramid":
            matrix = pairwise_laplacian(outputs[:, :1], images, loss.laplacian_levels)
        else:
            matrix = pairwise_mse(outputs[:, :1], images)
        if labels is not None:
            matrix += loss.label_weight * pairwise_label_loss(outputs[:, 1:], labels)
    return matrix


def chunked_pair_costs(
    outputs: Tensor, images: Tensor, loss: ReconstructionLoss, kind: str, labels: Tensor | None = None
) -> Tensor:
    """``pair_costs`` in chunks of COST_ROW_CHUNK images written into one matrix, so temporaries stay bounded by the chunk."""
    costs = torch.empty(len(images), len(outputs), device=outputs.device)
    for i in range(0, len(images), COST_ROW_CHUNK):
        rows = slice(i, i + COST_ROW_CHUNK)
        costs[rows] = pair_costs(outputs, images[rows], loss, kind, None if labels is None else labels[rows])
    return costs


def decode(generator: torch.nn.Module, latents: Tensor, batch_size: int, device: torch.device | str) -> Tensor:
    """G(latents) in eval mode, without gradients, in float32 batches on ``device``."""
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            latents = torch.as_tensor(latents, dtype=torch.float32)
            outputs = torch.cat([generator(z.to(device)).float() for z in latents.split(batch_size)])
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return outputs
    finally:
        generator.train(was_training)


class Sharding(Protocol):
    """Where the images are: spread over the processes of a torchrun job (``training.distributed.Shard``), or all
    in this one (``training.distributed.Alone``, which hands each block back to ``AssignmentProblem.block_costs``)."""

    owner: np.ndarray  # owner[i]: the process that holds global image i

    def block_costs(
        self, problem: AssignmentProblem, kind: str, rows: np.ndarray, columns: np.ndarray, timings: dict[str, float],
    ) -> np.ndarray | None:
        """The block's rows x columns costs on rank 0, None on the other ranks."""

    def broadcast(self, array: np.ndarray) -> np.ndarray:
        """Rank 0's copy of ``array``."""


@dataclass
class AssignmentProblem:
    """What an assignment step matches: the images (and label maps) against the generator's lattice points.

    ``images`` and ``labels`` are all the images, or under torchrun this process's share
    of them (``shard``); the lattice is always whole.
    """

    generator: torch.nn.Module
    lattice: Tensor
    images: Tensor
    loss: ReconstructionLoss
    cfg: AssignmentConfig
    batch_size: int
    device: torch.device | str
    labels: Tensor | None = None
    shard: Sharding | None = None

    def __post_init__(self) -> None:
        self.lattice = torch.as_tensor(self.lattice)

    @property
    def size(self) -> int:
        """Images matched: all of them, across every process under torchrun."""
        return len(self.images) if self.shard is None else len(self.shard.owner)

    def cost_kind(self, n: int | None = None) -> str:
        """``cost_kind`` of the configured cost for an n x n problem (default: the whole one)."""
        return cost_kind(self.cfg.cost, self.size if n is None else n, self.images[0].numel(),
                         self.loss.laplacian_weight > 0)

    def rows(self, local: np.ndarray | Tensor) -> tuple[Tensor, Tensor | None]:
        """This process's images (and label maps) at ``local`` rows, on the device."""
        picked = torch.as_tensor(local, device=self.images.device)
        labels = None if self.labels is None else self.labels[picked.to(self.labels.device)].to(self.device)
        return self.images[picked].to(self.device), labels

    def decode(self, columns: np.ndarray, timings: dict[str, float]) -> Tensor:
        """G at the lattice points ``columns``, its seconds added to ``timings["forward"]``."""
        start = time.perf_counter()
        outputs = decode(self.generator, self.lattice[torch.as_tensor(columns, device=self.lattice.device)],
                         self.batch_size, self.device)
        timings["forward"] += time.perf_counter() - start
        return outputs

    def costs(self, outputs: Tensor, images: Tensor, labels: Tensor | None, kind: str, timings: dict[str, float]) -> Tensor:
        """``chunked_pair_costs`` of images against decoded outputs, its seconds added to ``timings["cost"]``."""
        start = time.perf_counter()
        block = chunked_pair_costs(outputs, images, self.loss, kind, labels)
        if block.is_cuda:
            torch.cuda.synchronize(block.device)  # kernels run asynchronously: count them here, not in the LAP
        timings["cost"] += time.perf_counter() - start
        return block

    def block_costs(
        self, kind: str, rows: np.ndarray, columns: np.ndarray, timings: dict[str, float],
    ) -> np.ndarray:
        """Rows x columns costs in one process: only the block's columns are decoded, never all n."""
        outputs = self.decode(columns, timings)
        return self.costs(outputs, *self.rows(rows), kind, timings).cpu().numpy()


def assign(problem: AssignmentProblem, previous: np.ndarray | None, seed: int) -> AssignResult:
    """One assignment step: decode the lattice, cost it against the images (and label maps), solve the LAP.

    Dense (one exact problem) up to ``cfg.block_size`` images; above it in the seeded
    random blocks of ``assignment_blocks``, each exact, so that memory is one block's
    decoded points and rows x columns costs, never n x n, and given ``previous`` the total
    cost cannot rise. With a shard, each process costs its own images and rank 0 solves.
    """
    n, shard = problem.size, problem.shard
    if len(problem.lattice) != n:
        raise ValueError(f"{n} images but {len(problem.lattice)} lattice points")
    blocked = n > problem.cfg.block_size
    blocks = assignment_blocks(n, problem.cfg.block_size, seed, previous) if blocked else [(np.arange(n), np.arange(n))]
    block_costs = problem.block_costs if shard is None else partial(shard.block_costs, problem)
    kind = problem.cost_kind()
    timings = {"forward": 0.0, "cost": 0.0, "lap": 0.0}
    perm, total = np.zeros(n, dtype=np.int64), np.zeros(1)
    for rows, columns in blocks:
        block = block_costs(kind, rows, columns, timings)
        if block is not None:  # None on the ranks other than 0 under torchrun
            start = time.perf_counter()
            block = checked_costs(block)
            local = _lapjv(block)
            perm[rows] = columns[local]
            total += block[np.arange(len(rows)), local].sum()
            timings["lap"] += time.perf_counter() - start
    if shard is not None:
        perm, total = shard.broadcast(perm), shard.broadcast(total)
    changed = 1.0 if previous is None else float(np.mean(perm != previous))
    return AssignResult(perm, changed, float(total[0]), blocked, timings)


def _lapjv(cost: np.ndarray) -> np.ndarray:
    _, rows_to_columns, _ = lap.lapjv(np.ascontiguousarray(cost), extend_cost=False)
    return rows_to_columns.astype(np.int64)
