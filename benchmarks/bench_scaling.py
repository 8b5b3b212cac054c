"""How a fit grows with n: one epoch and one assignment round at n = 1k ... 64k 2D samples.

    python benchmarks/bench_scaling.py sizes [--sizes 1000 4000 16000 64000] [--block-size B] [--threads 1]
    python benchmarks/bench_scaling.py processes [--epochs 10] [--scans sample_data]
    python benchmarks/bench_scaling.py table OUTPUT...   # one table from several `sizes` outputs

``sizes``: every n runs in its own process (so its peak RSS is its own): the sample
cohort's axial slices at stride 1 (the default config otherwise, without label maps),
repeated with left-right flips and shifts of up to 3 voxels until there are n distinct
samples; then the trainer's own steps, as a fit runs them: the initial PCA assignment,
one epoch on those codes, one assignment round (blocked above assignment.block_size).
Prints, per n, the epoch's seconds, the round's seconds (decode / cost / LAP), peak RSS,
and the growth exponent k of seconds ~ n^k between consecutive sizes and fitted over all.

``processes``: the same default-config fit (stride 1 slices, ``--epochs``) alone with
2 threads and under ``torchrun --nproc-per-node 2`` with gloo (1 thread each): total
seconds and mean seconds per epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.engine.lattice import quantile_lattice
from neurosql_med.runtime import seed_everything
from neurosql_med.training.train import _set_up, _start, assignment_round, train_epoch

SHIFT = 3  # voxels, each way


def stride_one_config():
    return override(load_config("default"), data__slice_stride=1, data__labels="none", train__device="cpu")


def augmented(cohort: Cohort, n: int, seed: int = 0) -> Cohort:
    """n samples: the cohort's slices, then flipped and shifted copies of them (each copy a distinct image)."""
    rng = np.random.default_rng(seed)
    base = len(cohort)
    grown = cohort.subset(np.arange(n) % base)  # a fresh tensor of n images, changed in place below
    images = grown.images
    for i in range(base, n):  # copy k of slice j: a flip and a shift drawn for it
        image = images[i]
        if rng.random() < 0.5:
            image = image.flip(-1)
        dy, dx = rng.integers(-SHIFT, SHIFT + 1, size=2)
        images[i] = torch.roll(image, shifts=(int(dy), int(dx)), dims=(-2, -1))
    return grown


def one_size(n: int, scans: str, block_size: int | None, threads: int) -> dict:
    """Start a fit on n samples, one epoch, one round: their seconds and this process's peak RSS."""
    torch.set_num_threads(threads)
    cfg = override(stride_one_config(), assignment__block_size=block_size)
    cohort = augmented(load_cohort(scans, cfg.data), n)
    seed_everything(cfg.train.seed)
    lattice = quantile_lattice(n, cfg.model.latent_dim, cfg.model.lattice, seed=cfg.train.seed)
    trainer = _set_up(cohort, cfg, lattice, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        state = _start(Path(tmp), cohort, trainer, lattice)
        initial = time.perf_counter() - start
    start = time.perf_counter()
    train_epoch(trainer, state.perm, 0)
    epoch = time.perf_counter() - start
    state.epoch = 1
    row = assignment_round(trainer, state)
    return {
        "n": n, "threads": threads, "block_size": cfg.assignment.block_size, "initial_s": initial, "epoch_s": epoch,
        "round_s": row["assign_seconds"],
        "decode_s": row["assign_forward_seconds"], "cost_s": row["assign_cost_seconds"],
        "lap_s": row["assign_lap_seconds"], "blocked": bool(row.get("assignment_blocked")),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def exponents(ns: list[int], seconds: list[float]) -> tuple[list[float], float]:
    """k between consecutive sizes, and k fitted by least squares on log-log."""
    logn, logs = np.log(ns), np.log(seconds)
    steps = list(np.diff(logs) / np.diff(logn))
    return steps, float(np.polyfit(logn, logs, 1)[0])


def sizes(args: argparse.Namespace) -> None:
    rows = []
    for n in args.sizes:
        block = [] if args.block_size is None else ["--block-size", str(args.block_size)]
        run = subprocess.run([sys.executable, __file__, "one", str(n), "--scans", args.scans, "--threads",
                              str(args.threads), *block],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    report(rows)


def table(args: argparse.Namespace) -> None:
    """The table and exponents of the JSON rows that earlier ``sizes`` runs printed (one long run split in parts)."""
    lines = [line for f in args.files for line in Path(f).read_text().splitlines() if line.startswith("{")]
    report(sorted((json.loads(line) for line in lines), key=lambda r: r["n"]))


def report(rows: list[dict]) -> None:
    print("| n | initial PCA assignment (s) | epoch (s) | assignment round (s): decode / cost / LAP | blocked | peak RSS (GB) |")
    print("| ---: | ---: | ---: | --- | --- | ---: |")
    for r in rows:
        blocks = f"blocks of {r['block_size']:,}" if r["blocked"] else "no"
        print(f"| {r['n']:,} | {r['initial_s']:.1f} | {r['epoch_s']:.1f} | {r['round_s']:.1f}: {r['decode_s']:.1f} / "
              f"{r['cost_s']:.1f} / {r['lap_s']:.1f} | {blocks} | {r['peak_rss_gb']:.2f} |")
    ns = [r["n"] for r in rows]
    if len(ns) > 1:
        for key in ("epoch_s", "round_s"):
            steps, fitted = exponents(ns, [r[key] for r in rows])
            print(f"{key}: growth exponent between sizes {', '.join(f'{k:.2f}' for k in steps)}; fitted {fitted:.2f}")


def processes(args: argparse.Namespace) -> None:
    """The same fit alone (2 threads) and on 2 gloo processes (1 thread each)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "stride1.yaml"
        config.write_text(yaml.safe_dump(stride_one_config().to_dict(), sort_keys=False))
        common = ["fit", args.scans, "--config", str(config), "--epochs", str(args.epochs), "--device", "cpu"]
        runs = {
            "1 process, 2 threads": [sys.executable, "-m", "neurosql_med.cli", *common, "--threads", "2"],
            "2 gloo processes, 1 thread each": [sys.executable, "-m", "neurosql_med.cli", *common, "--nproc-per-node", "2"],
        }
        for name, command in runs.items():
            out = Path(tmp) / name.split()[0]
            start = time.perf_counter()
            subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, env=os.environ)
            total = time.perf_counter() - start
            history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
            per_epoch = float(np.mean([r["seconds"] for r in history]))
            print(f"| {name} | {len(history)} | {total:.1f} | {per_epoch:.2f} | {history[-1]['loss']:.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sizes")
    s.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    p = sub.add_parser("processes")
    p.add_argument("--epochs", type=int, default=10)
    o = sub.add_parser("one")
    o.add_argument("n", type=int)
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    for each in (s, p, o):
        each.add_argument("--scans", default="sample_data")
    for each in (s, o):
        each.add_argument("--block-size", type=int, default=None, help="assignment.block_size (default: the config's)")
        each.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on shared cores)")
    args = parser.parse_args()
    if args.what == "one":
        print(json.dumps(one_size(args.n, args.scans, args.block_size, args.threads)))
    else:
        {"sizes": sizes, "processes": processes, "table": table}[args.what](args)


if __name__ == "__main__":
    main()
