"""The assignment step: which lattice point codes which image.

For a fixed generator the best codes solve a linear assignment problem on
C[i, j] = loss(G(u_j), x_i), the discrete optimal transport between the images and the
lattice. It is solved exactly (Jonker-Volgenant via ``lap``), in random blocks when n is
too large for one dense n x n problem.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import lap
import numpy as np
import torch
from scipy.spatial.distance import cdist
from torch import Tensor

from neurosql_med.config import AssignmentConfig
from neurosql_med.engine.lattice import to_gaussian
from neurosql_med.engine.losses import ReconstructionLoss, pairwise_label_loss, pairwise_mse

# "auto" cost: the full loss while images x lattice points x voxels stays below this, which
# keeps a round near 1-1.5 s on one CPU thread; squared error above it (docs/decisions.md).
LOSS_COST_LIMIT = 1 << 26


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
    if not np.isfinite(cost).all():
        raise ValueError("assignment cost matrix has NaN or infinite entries (did training diverge?)")
    if n <= block_size:
        return _lapjv(cost), False
    order = np.random.default_rng(seed).permutation(n)
    columns_of = np.arange(n) if previous is None else np.asarray(previous)
    perm = np.empty(n, dtype=np.int64)
    for rows in np.array_split(order, math.ceil(n / block_size)):
        columns = columns_of[rows]
        perm[rows] = columns[_lapjv(cost[np.ix_(rows, columns)])]
    return perm, True


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
    images: Tensor, lattice: np.ndarray, kind: str = "gaussian", block_size: int = 16384, seed: int = 0
) -> np.ndarray:
    """Initial codes: OT between standardised PCA scores and the lattice (squared distance).

    A uniform lattice is compared through its Gaussian copula, on the scale of the scores.
    """
    points = to_gaussian(lattice, kind)
    codes = pca_codes(images, points.shape[1])
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
    if cost == "auto":
        cost = "loss" if len(images) * len(lattice) * images[0].numel() < LOSS_COST_LIMIT else "mse"
    if cost not in ("loss", "mse"):
        raise ValueError(f"unknown assignment cost {cost!r}")
    start = time.perf_counter()
    outputs = decode(generator, lattice, batch_size, device)
    decoded = time.perf_counter()
    targets = images.to(device)
    with torch.no_grad():
        matrix = loss.pairwise(outputs[:, :1], targets) if cost == "loss" else pairwise_mse(outputs[:, :1], targets)
        if labels is not None:
            matrix += loss.label_weight * pairwise_label_loss(outputs[:, 1:], labels.to(device))
    return matrix.double().cpu().numpy(), {"forward": decoded - start, "cost": time.perf_counter() - decoded}


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


def assign(
    generator: torch.nn.Module,
    lattice: Tensor | np.ndarray,
    images: Tensor,
    loss: ReconstructionLoss,
    cfg: AssignmentConfig,
    batch_size: int,
    device: torch.device | str,
    previous: np.ndarray | None,
    seed: int,
    labels: Tensor | None = None,
) -> AssignResult:
    """One assignment step: decode the lattice, build the costs (of images and their ``labels``), solve the LAP."""
    if len(lattice) != len(images):
        raise ValueError(f"{len(images)} images but {len(lattice)} lattice points")
    cost, timings = cost_matrix(generator, torch.as_tensor(lattice), images, loss, cfg.cost, batch_size, device, labels)
    start = time.perf_counter()
    perm, blocked = solve_assignment(cost, cfg.block_size, seed, previous)
    timings["lap"] = time.perf_counter() - start
    changed = 1.0 if previous is None else float(np.mean(perm != previous))
    total = float(cost[np.arange(len(perm)), perm].sum())
    return AssignResult(perm, changed, total, blocked, timings)


def _lapjv(cost: np.ndarray) -> np.ndarray:
    _, rows_to_columns, _ = lap.lapjv(np.ascontiguousarray(cost), extend_cost=False)
    return rows_to_columns.astype(np.int64)
