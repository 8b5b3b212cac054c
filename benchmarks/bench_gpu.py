"""One GPU measurement for benchmarks/gpu_check.sh: a fit or a synthesis, with peak GPU memory.

    python benchmarks/bench_gpu.py fit --config volume3d [--no-amp] [--epochs N] [--out DIR] [--scans sample_data]
    python benchmarks/bench_gpu.py synthesize --model DIR --n 500 [--out DIR]

Prints one JSON line: seconds per epoch (mean, and the mean after the first epoch), total
seconds, peak GPU memory allocated by torch (GB), the device. ``--device cpu`` runs the
same code without a GPU (peak memory then null), which is how the script is checked.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.synthesize import synthesize
from neurosql_med.training.train import fit


def peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def run_fit(args: argparse.Namespace) -> dict:
    cfg = override(load_config(args.config), train__device=args.device, train__amp=args.amp, train__epochs=args.epochs,
                   train__max_minutes=None)
    cohort = load_cohort(args.scans, cfg.data)
    start = time.perf_counter()
    result = fit(cohort, cfg, Path(args.out), force=True, show_progress=False)
    total = time.perf_counter() - start
    seconds = [row["seconds"] for row in result.history]
    later = seconds[1:] or seconds
    return {"what": f"fit {args.config}", "amp": cfg.train.amp, "samples": len(cohort), "epochs": len(seconds),
            "s_per_epoch": sum(seconds) / len(seconds), "s_per_epoch_after_first": sum(later) / len(later),
            "total_s": total, "loss": result.history[-1]["loss"], "ssim": result.history[-1]["ssim"],
            "peak_gpu_gb": peak_gb(args.device)}


def run_synthesize(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    options = SynthesizeOptions(model=Path(args.model), out=Path(args.out), n=args.n, device=args.device, force=True)
    summary = synthesize(options, show_progress=False)
    total = time.perf_counter() - start
    return {"what": f"synthesize {args.n}", "written": summary.written, "total_s": total,
            "per_image_s": total / max(summary.written, 1), "peak_gpu_gb": peak_gb(args.device)}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--config", default="default")
    f.add_argument("--scans", default="sample_data")
    f.add_argument("--epochs", type=int, default=None)
    f.add_argument("--no-amp", dest="amp", action="store_false")
    s = sub.add_parser("synthesize")
    s.add_argument("--model", required=True)
    s.add_argument("--n", type=int, default=500)
    for each in (f, s):
        each.add_argument("--device", default="cuda")
        each.add_argument("--out", default=tempfile.mkdtemp(prefix="nsql-gpu-"))
    args = parser.parse_args()
    row = run_fit(args) if args.what == "fit" else run_synthesize(args)
    row["device"] = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
