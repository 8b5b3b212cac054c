"""How long `evaluate` takes, and where the memorization threshold τ comes from.

    python benchmarks/bench_evaluate.py                # 500 synthetic vs 1000 real 64x80 slices (target <= 30 s)
    python benchmarks/bench_evaluate.py --tau [SCANS]  # d_syn / median(d_train): copies vs new subjects

The timing uses random smooth images: the cost depends on sizes, not content. The τ
measurement needs anatomy, so it reads a folder of scans (the sample cohort by default;
run sample_data/generate.py first) preprocessed by the default configs, trains on two
thirds of the subjects and compares, against that training set, the remaining subjects
(what a good generator should produce) with planted copies of training samples
degraded the ways a generator's output would be.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.evaluation.evaluate import score, write_outputs
from neurosql_med.metrics import TAU, audit, pairwise_mae
from neurosql_med.io.nifti import INTENSITY_MAX


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
    report = score(real, real_ids, synth, ids, tau=TAU)
    scored = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        a = time.perf_counter()
        write_outputs(Path(tmp), report, real, synth)
        written = time.perf_counter() - a
    print(f"  score (all metrics)           {scored:6.2f} s")
    print(f"  report files and pictures     {written:6.2f} s")
    print(f"  total                         {scored + written:6.2f} s")


TAUS = (0.3, 0.4, 0.5, 0.6)  # thresholds compared by --tau


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
    """Ratio quantiles per group, and the share flagged at τ = the default and its neighbours."""
    d_tt = pairwise_mae(train)
    rows = {"training (own nearest other)": np.asarray(audit(train, train[:2], TAU, d_tt=d_tt)["train_ratios"])}
    rows.update({name: np.asarray(audit(train, images, TAU, d_tt=d_tt)["ratios"]) for name, images in groups.items()})
    print(f"  {'group':36s} {'n':>4s} {'min':>6s} {'p1':>6s} {'median':>6s} {'max':>6s}"
          + "".join(f" {f'<{t:g}':>7s}" for t in TAUS))
    for name, r in rows.items():
        print(f"  {name:36s} {len(r):4d} {r.min():6.3f} {np.percentile(r, 1):6.3f} {np.median(r):6.3f} {r.max():6.3f}"
              + "".join(f" {np.mean(r < t):7.1%}" for t in TAUS))


def split_subjects(cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
    """Samples of the first two thirds of the subjects (training) and of the rest (new subjects)."""
    subjects = sorted(set(cohort.subjects))
    seen = set(subjects[: len(subjects) * 2 // 3])
    inside = np.array([s in seen for s in cohort.subjects])
    return np.flatnonzero(inside), np.flatnonzero(~inside)


def bench_tau(folder: Path) -> None:
    """2D: every slice is loaded (stride 1); training takes every 2nd as `fit` would, the others are
    slices of training subjects it never saw. 3D: whole volumes."""
    cohort = load_cohort(folder, override(load_config("default"), data__slice_stride=1).data)
    train_at, new_at = split_subjects(cohort)
    first = {}
    for i in train_at:
        first.setdefault(cohort.scan_ids[i], cohort.slice_index[i])
    even = np.array([(cohort.slice_index[i] - first[cohort.scan_ids[i]]) % 2 == 0 for i in train_at])
    train = cohort.images[train_at[even]]
    print(f"2D {folder}: {len(train)} training slices of {len(first)} subjects, shape {list(train.shape[2:])}")
    print_ratios(train, {
        "new subjects": cohort.images[new_at[::2]],
        "unseen slices of training subjects": cohort.images[train_at[~even]],
        **planted(train, 200),
    })
    volumes = load_cohort(folder, load_config("volume3d").data)
    train_at, new_at = split_subjects(volumes)
    print(f"3D: {len(train_at)} training volumes, shape {volumes.geometry.sample_shape}")
    print_ratios(volumes.images[train_at], {"new subjects": volumes.images[new_at], **planted(volumes.images[train_at], 20)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tau", type=Path, nargs="?", const=Path(__file__).parents[1] / "sample_data", metavar="SCANS",
                        help="instead of timing, measure copy vs new-subject ratios on a folder of scans (default: sample_data)")
    parser.add_argument("--real", type=int, default=1000)
    parser.add_argument("--synthetic", type=int, default=500)
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 80])
    args = parser.parse_args()
    if args.tau is not None:
        bench_tau(args.tau)
    else:
        bench_timing(args.real, args.synthetic, tuple(args.shape))


if __name__ == "__main__":
    main()
