"""Time exact linear assignment (lap.lapjv vs scipy) on image-like cost matrices.

    python benchmarks/bench_lap.py [--sizes 1000 2000 4000 8000] [--cap 120]

Costs are mean squared errors between n random smooth 32x40 images and n decoded
"outputs" in three regimes:
  trained    outputs are the images, shuffled, plus noise of 0.5x the image contrast
  noisy      the same with noise equal to the image contrast (a half-trained generator)
  untrained  every output is the mean image plus 2% unrelated smooth variation: the
             near-degenerate costs of a fresh generator
Each solve runs in a child process and is stopped after --cap seconds. The last rows
time solve_assignment with its default block size at the largest n (when above it), cold
(random blocks) and warm (blocks built around a previous assignment: the exact optimum
with 10% of the images' codes shuffled), with the excess cost over the exact optimum.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from functools import partial
from typing import Callable

import lap
import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.optimize import linear_sum_assignment

from neurosql_med.engine.assignment import solve_assignment
from neurosql_med.engine.losses import pairwise_mse

REGIMES = {"trained": 0.5, "noisy": 1.0, "untrained": None}


def smooth_images(n: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal((n, 32, 40)).astype(np.float32)
    images = gaussian_filter(noise, sigma=(0, 2, 2))
    return images / images.std()


def cost_matrix(n: int, regime: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = smooth_images(n, rng)
    if REGIMES[regime] is None:
        outputs = images.mean(0) + 0.02 * smooth_images(n, rng)
    else:
        outputs = images[rng.permutation(n)] + REGIMES[regime] * rng.standard_normal(images.shape).astype(np.float32)
    return pairwise_mse(torch.from_numpy(outputs)[:, None], torch.from_numpy(images)[:, None]).double().numpy()


def _lap(cost: np.ndarray) -> np.ndarray:
    return lap.lapjv(cost, extend_cost=False)[1]


def _scipy(cost: np.ndarray) -> np.ndarray:
    return linear_sum_assignment(cost)[1]


def _blocked(cost: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    return solve_assignment(cost, previous=previous)[0]


def perturbed(perm: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """perm with a random `fraction` of its entries permuted among themselves."""
    rng = np.random.default_rng(seed)
    moved = rng.choice(len(perm), size=int(fraction * len(perm)), replace=False)
    perm = perm.copy()
    perm[moved] = perm[rng.permutation(moved)]
    return perm


def _child(solver: Callable[[np.ndarray], np.ndarray], cost: np.ndarray, queue: mp.Queue) -> None:
    start = time.perf_counter()
    perm = solver(cost)
    queue.put((time.perf_counter() - start, float(cost[np.arange(len(perm)), perm].sum())))


def timed(solver: Callable[[np.ndarray], np.ndarray], cost: np.ndarray, cap: float) -> tuple[float, float] | None:
    """(seconds, total cost), or None when the solver ran past the cap."""
    queue: mp.Queue = mp.get_context("fork").Queue()
    child = mp.get_context("fork").Process(target=_child, args=(solver, cost, queue))
    child.start()
    child.join(cap)
    if child.is_alive():
        child.terminate()
        child.join()
        return None
    return queue.get()


def fmt(result: tuple[float, float] | None, cap: float) -> str:
    return f">{cap:.0f}s" if result is None else f"{result[0]:.2f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--cap", type=float, default=120.0)
    args = parser.parse_args()
    print(f"{'regime':10s} {'n':>6s} {'lap':>9s} {'scipy':>9s}  same optimum")
    capped: set[tuple[str, str]] = set()
    for regime in REGIMES:
        for n in args.sizes:
            cost = cost_matrix(n, regime)
            results = {}
            for name, solver in (("lap", _lap), ("scipy", _scipy)):
                results[name] = None if (regime, name) in capped else timed(solver, cost, args.cap)
                if results[name] is None:
                    capped.add((regime, name))
            totals = [r[1] for r in results.values() if r is not None]
            same = "yes" if len(totals) == 2 and np.isclose(*totals, rtol=1e-9) else "-"
            print(f"{regime:10s} {n:6d} {fmt(results['lap'], args.cap):>9s} {fmt(results['scipy'], args.cap):>9s}  {same}", flush=True)
    n = max(args.sizes)
    if n <= 4096:
        return
    print(f"\nsolve_assignment, n={n}, blocks of <= 4096: seconds (excess cost over the exact optimum)")
    for regime in REGIMES:
        cost = cost_matrix(n, regime)
        optimum = _lap(cost)
        best = cost[np.arange(n), optimum].sum()
        warm_start = perturbed(optimum, 0.1)
        row = [f"previous +{cost[np.arange(n), warm_start].sum() / best - 1:.2%}"]
        for label, previous in (("cold", None), ("warm", warm_start)):
            result = timed(partial(_blocked, previous=previous), cost, args.cap)
            row.append(f"{label} {fmt(result, args.cap)}" + ("" if result is None else f" (+{result[1] / best - 1:.2%})"))
        print(f"  {regime:10s} " + "   ".join(row), flush=True)


if __name__ == "__main__":
    main()
