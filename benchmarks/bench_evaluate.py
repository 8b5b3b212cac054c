"""How long `evaluate` takes, and where the memorization threshold τ comes from.

    python benchmarks/bench_evaluate.py            # 500 synthetic vs 1000 real 64x80 slices (target <= 30 s)
    python benchmarks/bench_evaluate.py --tau      # d_syn / median(d_train) of copies vs new subjects

The timing uses random smooth images: the cost depends on sizes, not content. The τ
measurement needs anatomy-like structure, so it uses brain phantoms (ellipsoid brain,
folded grey-matter rim, white matter, ventricles, tissue texture; every subject drawn
at random): training slices, slices of new subjects (what a good generator should
produce), and planted copies of training slices degraded the ways a generator would.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from neurosql_med.evaluate import score, write_outputs
from neurosql_med.metrics import TAU, audit, pairwise_mae
from neurosql_med.writer import INTENSITY_MAX


def smooth_images(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((n, 1, *shape)), (0, 0, *(3,) * len(shape)))
    lo = x.min(axis=tuple(range(1, x.ndim)), keepdims=True)
    hi = x.max(axis=tuple(range(1, x.ndim)), keepdims=True)
    return torch.from_numpy(((x - lo) / (hi - lo)).astype(np.float32))


def bench_timing(n_real: int, n_synth: int, shape: tuple[int, ...]) -> None:
    real, synth = smooth_images(n_real, shape, 0), smooth_images(n_synth, shape, 1)
    ids = [f"synth{i}" for i in range(n_synth)]
    real_ids = [f"real{i}" for i in range(n_real)]
    print(f"{n_synth} synthetic vs {n_real} real, shape {shape}, {torch.get_num_threads()} threads")
    started = time.perf_counter()
    a = time.perf_counter()
    pairwise_mae(synth, real)
    print(f"  synthetic x real MAE matrix   {time.perf_counter() - a:6.2f} s")
    a = time.perf_counter()
    pairwise_mae(real)
    print(f"  real x real MAE matrix        {time.perf_counter() - a:6.2f} s")
    started = time.perf_counter()
    report = score(real, real_ids, synth, ids, None, TAU)
    scored = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        a = time.perf_counter()
        write_outputs(Path(tmp), report, real, synth)
        written = time.perf_counter() - a
    print(f"  score (all metrics)           {scored:6.2f} s")
    print(f"  report files and pictures     {written:6.2f} s")
    print(f"  total                         {scored + written:6.2f} s")


def phantom(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """One random brain-like volume in [0, 1]."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    centre = rng.normal(0, 0.03, 3)[:, None, None, None]
    radii = rng.uniform(0.72, 0.9, 3)[:, None, None, None]
    warp = ndimage.gaussian_filter(rng.normal(size=(3, *shape)), (0, 8, 8, 8)) * 0.3
    q = (((g - centre + warp) / radii) ** 2).sum(0)
    brain = q < 1
    folds = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    folds /= folds.std()
    wm = q < (0.75 - 0.06 * folds) ** 2
    img = np.where(brain, 0.45, 0.0) + np.where(wm, 0.3, 0.0)
    img = np.where(brain & ~wm & (folds > 1.2), 0.15, img)  # sulcal CSF
    v_centre = rng.normal(0, 0.05, 3)[:, None, None, None]
    v_radii = np.array([rng.uniform(0.08, 0.2), rng.uniform(0.2, 0.35), rng.uniform(0.1, 0.2)])[:, None, None, None]
    for side in (-1, 1):
        offset = np.array([side * rng.uniform(0.08, 0.14), 0, 0])[:, None, None, None]
        img = np.where((((g - v_centre - offset) / v_radii) ** 2).sum(0) < 1, 0.12, img)
    img = img + brain * ndimage.gaussian_filter(rng.normal(size=shape), 1.0) * 0.08
    return np.clip(ndimage.gaussian_filter(img, 0.7) * rng.uniform(0.85, 1.1), 0, 1).astype(np.float32)


def axial_slices(volume: np.ndarray, offset: int = 0) -> list[np.ndarray]:
    """Every 2nd axial slice of the brain's central 60 %, as the default config samples them."""
    present = np.nonzero((volume > 0.01).any(axis=(0, 1)))[0]
    first, extent = present[0], present[-1] + 1 - present[0]
    return [volume[:, :, z] for z in range(first + round(0.2 * extent) + offset, first + round(0.8 * extent), 2)]


def stored(x: torch.Tensor) -> torch.Tensor:
    """As written to an int16 NIfTI and read back."""
    return torch.round(x.clamp(0, 1) * INTENSITY_MAX) / INTENSITY_MAX


def planted(train: torch.Tensor, count: int) -> dict[str, torch.Tensor]:
    """Copies of training samples, degraded as a generator's output might be."""
    gen = torch.Generator().manual_seed(0)
    picked = train[torch.randperm(len(train), generator=gen)[:count]]
    spatial = (0, 0) + (1,) * (train.ndim - 2)

    def noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return stored(x + sigma * torch.randn(x.shape, generator=gen) * (x > 0))

    def blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.from_numpy(ndimage.gaussian_filter(x.numpy(), tuple(s * sigma for s in spatial)))

    return {
        "copy, exact (int16)": stored(picked),
        **{f"copy + noise σ={s}": noisy(picked, s) for s in (0.01, 0.02, 0.03, 0.05)},
        "copy, blurred σ=0.7 px": blurred(picked, 0.7),
        "copy, blurred σ=1 px": blurred(picked, 1.0),
        "copy, blurred 0.7 + noise 0.02": noisy(blurred(picked, 0.7), 0.02),
        "copy, shifted 1 px": torch.roll(picked, 1, dims=-1),
    }


def print_ratios(train: torch.Tensor, groups: dict[str, torch.Tensor]) -> None:
    d_tt = pairwise_mae(train)
    base = audit(train, train[:2], TAU, d_tt=d_tt)
    own = np.asarray(base["train_ratios"])
    print(f"  median d_train {base['median_d_train']:.4f}; training samples' own ratios: "
          f"p1 {np.percentile(own, 1):.3f}, p5 {np.percentile(own, 5):.3f}, below τ={TAU}: {np.mean(own < TAU):.1%}")
    print(f"  {'group':34s} {'n':>4s} {'min':>6s} {'median':>6s} {'max':>6s} {'flagged':>8s}")
    for name, images in groups.items():
        r = np.asarray(audit(train, images, TAU, d_tt=d_tt)["ratios"])
        print(f"  {name:34s} {len(r):4d} {r.min():6.3f} {np.median(r):6.3f} {r.max():6.3f} {np.mean(r < TAU):8.1%}")


def bench_tau() -> None:
    rng = np.random.default_rng(1)
    shape = (64, 80, 64)
    train_volumes = [phantom(rng, shape) for _ in range(30)]
    new_volumes = [phantom(rng, shape) for _ in range(20)]

    def stack(slices: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(slices))[:, None]

    train = stack([s for v in train_volumes for s in axial_slices(v)])
    print(f"2D: {len(train)} training slices of 30 phantom subjects")
    print_ratios(train, {
        "new subjects": stack([s for v in new_volumes for s in axial_slices(v)]),
        "unseen slices of training subjects": stack([s for v in train_volumes for s in axial_slices(v, offset=1)]),
        **planted(train, 200),
    })
    shape3 = (48, 56, 48)
    train3 = torch.from_numpy(np.stack([phantom(rng, shape3) for _ in range(30)]))[:, None]
    print(f"3D: 30 training volumes {shape3}")
    print_ratios(train3, {
        "new subjects": torch.from_numpy(np.stack([phantom(rng, shape3) for _ in range(20)]))[:, None],
        **planted(train3, 30),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tau", action="store_true", help="measure copy vs new-subject ratios instead of timing")
    parser.add_argument("--real", type=int, default=1000)
    parser.add_argument("--synthetic", type=int, default=500)
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 80])
    args = parser.parse_args()
    if args.tau:
        bench_tau()
    else:
        bench_timing(args.real, args.synthetic, tuple(args.shape))


if __name__ == "__main__":
    main()
