"""Fit timings and quality on the sample cohort (figures for docs/results/timings.md).

    python benchmarks/bench_fit.py --config default [--minutes 3] [--scans sample_data]

Prints: preprocessing time (cold, then re-reading the MONAI cache), seconds per
generator epoch and per assignment step split into forward pass / cost matrix / LAP,
total fit time, and the SSIM / L1 of the final reconstructions of every training sample.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.io.model import load_model
from neurosql_med.training.train import fit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="default")
    parser.add_argument("--scans", default="sample_data")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget (default: the config's epochs)")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    cfg = override(load_config(args.config), train__max_minutes=args.minutes, train__epochs=args.epochs)

    start = time.perf_counter()
    cohort = load_cohort(args.scans, cfg.data)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    load_cohort(cohort.discovery, cfg.data)
    warm = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = fit(cohort, cfg, Path(tmp) / "model", show_progress=False)
        total = time.perf_counter() - start
        model = load_model(Path(tmp) / "model")
        recon = model.reconstructions()
        loss = ReconstructionLoss(recon.dim() - 2, cfg.loss.ssim_weight, cfg.loss.ssim_window)
        with torch.no_grad():
            ssim = float(loss.ssim(recon, cohort.images).mean())
            l1 = float((recon - cohort.images).abs().mean())

    rows = result.history
    plain = [r["seconds"] for r in rows if "assign_seconds" not in r]
    assigned = [r for r in rows if "assign_seconds" in r]
    mean = lambda key: statistics.mean(r[key] for r in assigned) if assigned else float("nan")  # noqa: E731
    report = {
        "config": args.config,
        "mode": cfg.data.mode,
        "scans": len(cohort.discovery.scans),
        "samples": len(cohort),
        "sample_shape": cohort.geometry.sample_shape,
        "parameters": sum(p.numel() for p in model.generator.parameters()),
        "load_seconds_cold": round(cold, 2),
        "load_seconds_second_pass": round(warm, 2),
        "epochs": result.epochs,
        "fit_seconds": round(total, 1),
        "epoch_seconds_without_assignment": round(statistics.mean(plain), 3) if plain else None,
        "assignment_steps": len(assigned),
        "assign_forward_seconds": round(mean("assign_forward_seconds"), 3),
        "assign_cost_seconds": round(mean("assign_cost_seconds"), 3),
        "assign_lap_seconds": round(mean("assign_lap_seconds"), 4),
        "changed_fraction": [round(r["changed_fraction"], 3) for r in assigned],
        "final_reconstruction_ssim": round(ssim, 4),
        "final_reconstruction_l1": round(l1, 4),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
