"""Generator ablation: each decoder/loss option fitted for the same wall-clock budget, judged on a held-out split.

Usage (one variant per process, each under the shared CPU lock; then the table):
    flock /tmp/nsql-cpu.lock python benchmarks/bench_generator.py run baseline
    flock /tmp/nsql-cpu.lock python benchmarks/bench_generator.py run resize
    python benchmarks/bench_generator.py table   # → benchmarks/generator-ablation.md
    flock /tmp/nsql-cpu.lock python benchmarks/bench_generator.py run baseline --config volume3d --minutes 14 --n 200
    python benchmarks/bench_generator.py table --config volume3d   # → benchmarks/generator-ablation-volume3d.md

Every variant trains on the same 80 % of sample_data's subjects (split by subject, seed 0)
through the benchmark's budget-fitting NeuroSQL runner (time two epochs, then fix the epoch
count that fills the budget: the cosine schedule always finishes), samples N images, and
is scored against the training slices and the held-out subjects: C2ST AUC (with its two
controls), reconstruction C2ST, nearest-real MAE, held-out MAE/SSIM, diversity ratio,
flagged copies, texture ratios, epochs and fit time; for a model with a residual texture
also its samples without it (G(u) alone, from the same fit).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.engine.lattice import reference_draws
from neurosql_med.engine.residual import texture_seeds
from neurosql_med.evaluation.benchmark import NeuroSQL
from neurosql_med.evaluation.c2st import c2st_section
from neurosql_med.evaluation.evaluate import sample_ids, score
from neurosql_med.evaluation.splits import split_by_subject
from neurosql_med.evaluation.texture import texture

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmark-out" / "generator-ablation"
TABLE = ROOT / "benchmarks" / "generator-ablation.md"
VARIANTS: dict[str, dict] = {
    "no-texture": {"model__texture": 0.0},  # the default before the residual texture: samples are G(u) alone
    "baseline": {},
    "resize": {"model__upsample": "resize", "train__lr": 0.002},  # at the default 0.005 it diverged (resize+gradient)
    "gradient": {"loss__gradient_weight": 1.0},
    "resize+gradient": {"model__upsample": "resize", "loss__gradient_weight": 1.0},  # diverged at epoch 7, lr 0.005
    "ema": {"train__ema": 0.995},
    "wide-last": {"model__channels": [256, 128, 64, 64]},
    "resize+gradient+wide-last": {"model__upsample": "resize", "loss__gradient_weight": 1.0,
                                  "model__channels": [256, 128, 64, 64]},
}


def run(name: str, minutes: float, n: int, scans: Path, config: str) -> dict:
    cfg = override(load_config(config), train__device="cpu", **VARIANTS[name])
    cohort = load_cohort(scans, cfg.data)
    train, held = split_by_subject(cohort, 0.2, seed=0)
    method = NeuroSQL(cfg, train, out_dir(config) / "models" / name)
    trained = method.fit(train.images, minutes * 60, seed=0, device=torch.device("cpu"))
    model = method.model
    z, _ = reference_draws(np.arange(1, n + 1), model.latent_dim, model.lattice_kind, 0)
    started = time.monotonic()
    synth = model.sample(z, texture_seeds(0, np.arange(1, n + 1)))[0]
    result = {
        "variant": name, "overrides": VARIANTS[name], "config": config, "budget_minutes": minutes,
        "threads": torch.get_num_threads(), "epochs": trained["epochs"], "fit_seconds": trained["seconds"], "n": n,
        "train_subjects": len(set(train.subjects)), "holdout_subjects": len(set(held.subjects)),
        **measure(train, held, synth, model.sampled_reconstructions()),
    }
    if model.texture is not None:  # the same fit's samples without their texture: G(u) alone, before and after at once
        result["decoder_only"] = measure(train, held, model.decode(z), model.reconstructions())
    reference = score(train.images, sample_ids(train), held.images, sample_ids(held))
    return result | {"reference_mae": reference["fidelity"]["mae"], "reference_ssim": reference["fidelity"]["ssim"],
                     "scoring_seconds": time.monotonic() - started}


def measure(train: Cohort, held: Cohort, synth: torch.Tensor, reconstructions: torch.Tensor) -> dict:
    """The table's scores of ``synth`` (and the reconstruction C2ST of ``reconstructions``)."""
    scores = score(train.images, sample_ids(train), synth, [f"synthetic-{i}" for i in range(len(synth))],
                   held=held.images)
    return {
        "mae": scores["fidelity"]["mae"], "holdout_mae": scores["holdout"]["fidelity"]["mae"],
        "holdout_ssim": scores["holdout"]["fidelity"]["ssim"], "diversity_ratio": scores["diversity"]["ratio"],
        "copies": scores["memorization"]["fraction_flagged"], "recall": scores["distribution"]["recall"],
        "c2st": c2st_section(train.images, train.subjects, synth, reconstructions=reconstructions),
        "texture": {k: v for k, v in texture(train.images, synth).items() if k.endswith("ratio")},
    }


def out_dir(config: str) -> Path:
    return OUT if config == "default" else OUT.with_name(f"{OUT.name}-{config}")


def _auc(test: dict | None) -> str:
    return "n/a" if test is None else f"{test['auc']:.3f} ± {test['auc_std']:.3f}"


def _overrides(overrides: dict) -> str:
    return ", ".join(f"{k.replace('__', '.')}={v}" for k, v in overrides.items()) or "default config"


def table(config: str) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out_dir(config).glob("*.json"))]
    rows.sort(key=lambda r: list(VARIANTS).index(r["variant"]))
    head = ("| variant | overrides | epochs | fit s | C2ST AUC | C2ST recon | controls (real/real, blur) | MAE→train | "
            "MAE→held-out | SSIM→held-out | diversity ratio | copies | recall | HF power ratio | gradient ratio |")
    lines = [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
    for r in rows:
        lines.append(_row(r["variant"], _overrides(r["overrides"]), r, r))
        if "decoder_only" in r:
            lines.append(_row(f"{r['variant']}, G(u) alone", "the same fit, samples without their texture", r,
                              r["decoder_only"]))
    if rows:
        r = rows[0]
        lines += ["", f"Real held-out subjects scored the same way: MAE→train {r['reference_mae']:.4f}, "
                      f"SSIM→train {r['reference_ssim']:.3f}. {r['train_subjects']} training / {r['holdout_subjects']} "
                      f"held-out subjects, {r['n']} samples per variant, config {config}, {r['budget_minutes']:g}-minute "
                      f"budget, CPU, threads: {r['threads']}."]
    return "\n".join(lines) + "\n"


def _row(variant: str, overrides: str, fit: dict, r: dict) -> str:
    c = r["c2st"]["controls"]
    return (f"| {variant} | {overrides} | {fit['epochs']} | {fit['fit_seconds']:.0f} | {_auc(r['c2st']['synthetic'])} | "
            f"{_auc(r['c2st']['reconstruction'])} | {_auc(c['real_vs_real'])}, {_auc(c['blur'])} | {r['mae']:.4f} | "
            f"{r['holdout_mae']:.4f} | {r['holdout_ssim']:.3f} | {r['diversity_ratio']:.3f} | {r['copies']:.1%} | "
            f"{r['recall']:.2f} | {r['texture']['high_frequency_ratio']:.3f} | {r['texture']['gradient_ratio']:.3f} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "table"))
    parser.add_argument("variants", nargs="*", help=", ".join(VARIANTS))
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--scans", type=Path, default=ROOT / "sample_data")
    parser.add_argument("--config", default="default", help="default (2D) or volume3d")
    args = parser.parse_args(argv)
    if args.action == "table":
        path = TABLE if args.config == "default" else TABLE.with_name(f"{TABLE.stem}-{args.config}.md")
        path.write_text("# Generator ablation (benchmarks/bench_generator.py)\n\n" + table(args.config))
        print(path.read_text())
        return
    out = out_dir(args.config)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        result = run(name, args.minutes, args.n, args.scans, args.config)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "c2st"}, indent=1),
              "C2ST", _auc(result["c2st"]["synthetic"]), "recon", _auc(result["c2st"]["reconstruction"]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
