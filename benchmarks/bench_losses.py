"""Time the SSIM implementations and the all-pairs assignment costs.

    python benchmarks/bench_losses.py [--threads N] [--repeats R]

1. SSIM forward + backward on a batch of four 64^3 volumes: MONAI's SSIMLoss (dense
   7x7x7 kernel), separable filtering as grouped 1-D convolutions (the prototype's choice),
   and ReconstructionLoss.ssim (separable filtering as shifted multiply-adds).
2. The assignment cost matrices: ReconstructionLoss.pairwise (full loss) and pairwise_mse
   for n = 300 2D 64x80 slices and n = 24 3D 64x80x64 volumes, with the cost per
   pair-voxel that sets assignment.LOSS_COST_LIMIT.
Reports the best of R runs, as the machine may be shared.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss

from neurosql_med.engine.losses import ReconstructionLoss, gaussian_window, pairwise_mse


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator and oneDNN primitive caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def grouped_conv_ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Reference: the five statistics as channels of one grouped 1-D convolution per axis."""
    taps = gaussian_window(window, sigma)
    stack = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    for axis in range(3):
        shape = [5, 1, 1, 1, 1]
        shape[2 + axis] = window
        stack = F.conv3d(stack, taps.reshape(1, 1, *shape[2:]).expand(shape), groups=5)
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.unbind(1)
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * (e_xy - mu_x * mu_y) + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (e_xx - mu_x**2 + e_yy - mu_y**2 + c2)
    )
    return ssim_map.flatten(1).mean(1)


def ssim_table(repeats: int) -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(4, 1, 64, 64, 64, generator=generator)
    pred = (target + 0.2 * torch.rand(4, 1, 64, 64, 64, generator=generator)).clamp(0, 1).requires_grad_()
    monai_loss = SSIMLoss(spatial_dims=3, win_size=7, kernel_sigma=1.5)
    ours = ReconstructionLoss(3)
    variants = {
        "MONAI SSIMLoss (dense 7^3 kernel)": lambda: monai_loss(pred, target),
        "grouped separable conv3d": lambda: 1 - grouped_conv_ssim(pred, target).mean(),
        "ReconstructionLoss.ssim (shift-add)": lambda: 1 - ours.ssim(pred, target).mean(),
    }
    print("SSIM, forward + backward, batch of four 64^3 volumes")
    for name, loss in variants.items():
        seconds = best_time(lambda: loss().backward(), repeats)
        print(f"  {name:38s} {seconds:8.3f} s")
    with torch.no_grad():
        gap = (monai_loss(pred, target) - (1 - ours.ssim(pred, target).mean())).abs().item()
    print(f"  |MONAI - ours| on the batch-mean loss: {gap:.1e}")


def pairwise_table(repeats: int) -> None:
    print("\nassignment cost matrix (images x decoded lattice), no grad")
    print(f"  {'case':28s} {'full loss':>10s} {'ns/pair-vox':>12s} {'mse':>8s}")
    for label, dims, n, shape in [("2D n=300 64x80", 2, 300, (64, 80)), ("3D n=24 64x80x64", 3, 24, (64, 80, 64))]:
        generator = torch.Generator().manual_seed(1)
        images = torch.rand(n, 1, *shape, generator=generator)
        outputs = torch.rand(n, 1, *shape, generator=generator)
        loss = ReconstructionLoss(dims)
        with torch.no_grad():
            full = best_time(lambda: loss.pairwise(outputs, images), repeats)
            mse = best_time(lambda: pairwise_mse(outputs, images), repeats)
        per_voxel = full / (n * n * images[0].numel()) * 1e9
        print(f"  {label:28s} {full:9.2f}s {per_voxel:12.1f} {mse:7.3f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats}\n")
    ssim_table(args.repeats)
    pairwise_table(args.repeats)


if __name__ == "__main__":
    main()
