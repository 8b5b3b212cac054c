"""The generator ablation on one cohort build: each switch of generator v2 on and off, one table.

Every row is a built-in config (`--base`: the 2D default, or volume3d) with one switch (or the
base model drawn or textured another way), fitted on the same training scans with the same seed
and epochs, then 500 samples (100 volumes in 3D) and `evaluate --c2st strong` twice: against the
held-out scans (the sample C2ST and every other signal) and against the training scans (which adds
the reconstruction C2ST).

    python benchmarks/ablation.py run NAME [--base volume3d] [--cohort realistic-cohort] [--runs realistic-runs/ablation]
    python benchmarks/ablation.py table [--runs realistic-runs/ablation]
    python benchmarks/ablation.py figure OUT.png [--cohort ...] [--runs ...]

`run` is resumable (a finished step is not run again); run two at a time, one core each
(`taskset -c 0 ... & taskset -c 1 ...`). `table` prints the markdown table of the results page;
`figure` draws held-out real slices above six written samples of every row (files as users get them).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml

from neurosql_med.data.cohort import load_cohort
from neurosql_med.evaluation.evaluate import read_synthetic
from neurosql_med.io.model import HASHES, load_model
from neurosql_med.viz.plots import image_grid

NSQL = [sys.executable, "-m", "neurosql_med.cli"]
SAMPLES = {"2d": 500, "3d": 100}  # a 3D sample is a whole brain
STACK_SLICES = 12  # a subject-code model writes stacks of this many slices: SAMPLES // 12 stacks

RESIDUAL = {"decoder": "residual"}  # its widths are half the base's: each stage has two convolutions

# name -> (what the row changes, config overrides, the variant whose model it reuses, synthesize flags)
VARIANTS: dict[str, tuple[str, dict, str | None, list[str]]] = {
    "default": ("default (plain decoder, global texture, 16-d codes)", {}, None, []),
    "no-texture": ("default model, `--no-texture` (G(u) alone)", {}, "default", ["--no-texture"]),
    "levels": ("1 slice levels (6 strata)", {"model": {"slice_levels": 6}}, None, []),
    "subjects": ("1 + 2 subject codes", {"model": {"slice_levels": 6, "subject_codes": True}}, None, []),
    "residual": ("3 modulated residual decoder", {"model": RESIDUAL}, None, []),
    "pyramid": ("4 Laplacian-pyramid L1", {"loss": {"laplacian_weight": 1.0}}, None, []),
    "latent8": ("5 latent dimension 8", {"model": {"latent_dim": 8}}, None, []),
    "near": ("5 default model, draws near the codes (`--near-codes 0.6`)", {}, "default", ["--near-codes", "0.6"]),
    "refiner": ("6 refiner + global texture", {"model": {"texture_mode": "refiner"}}, None, []),
    "tissue": ("6 per-tissue texture", {"model": {"texture_mode": "tissue"}}, None, []),
    "residual-spectrum": ("global texture with the residual's spectrum (the default before 2026-12-08)",
                          {"model": {"texture_spectrum": "residual"}}, None, []),
    "combined": ("3 + 4 + 6 residual decoder, pyramid L1, refiner",
                 {"model": {**RESIDUAL, "texture_mode": "refiner"}, "loss": {"laplacian_weight": 1.0}}, None, []),
}


def config_for(name: str, base_name: str) -> dict:
    """The base config with the row's overrides; a residual decoder gets half the base's widths."""
    base = yaml.safe_load(resources.files("neurosql_med.configs").joinpath(f"{base_name}.yaml").read_text())
    config = merged(base, VARIANTS[name][1])
    if config["model"].get("decoder") == "residual":
        config["model"]["channels"] = [width // 2 for width in base["model"]["channels"]]
    return config


def merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def step(done: Path, command: list[str], timings: Path, name: str) -> None:
    """Run one CLI step unless its output exists; record its seconds."""
    if done.exists():
        return
    start = time.perf_counter()
    subprocess.run(command, check=True)
    times = json.loads(timings.read_text()) if timings.exists() else {}
    times[name] = round(time.perf_counter() - start, 1)
    timings.write_text(json.dumps(times, indent=2))


def run(name: str, base: str, cohort: Path, runs: Path, threads: int) -> None:
    _, changes, reuse, flags = VARIANTS[name]
    folder = runs / name
    model = runs / reuse / "model" if reuse else folder / "model"
    finished = model / HASHES  # written last, when a fit completes
    if reuse and not finished.exists():
        sys.exit(f"error: run the {reuse} row first: this row draws from its model")
    folder.mkdir(parents=True, exist_ok=True)
    timings = folder / "seconds.json"
    config = folder / "config.yaml" if reuse is None else runs / reuse / "config.yaml"
    if reuse is None:
        config.write_text(yaml.safe_dump(config_for(name, base), sort_keys=False))
        resume = ["--resume"] if model.exists() else []  # an interrupted fit continues
        step(finished, NSQL + ["fit", str(cohort / "bids"), "--config", str(config), "--out", str(model),
                               "--threads", str(threads)] + resume, timings, "fit")
    mode = yaml.safe_load(config.read_text())["data"]["mode"]
    samples = SAMPLES[mode]
    n = samples // STACK_SLICES if changes.get("model", {}).get("subject_codes") else samples
    synth = folder / "synth"
    step(synth, NSQL + ["synthesize", "--model", str(model), "--n", str(n), "--out", str(synth), "--threads",
                        str(threads)] + flags, timings, "synthesize")
    for target, real in (("report", "heldout"), ("report-train", "bids")):
        if real == "bids" and (name == "near" or (mode == "3d" and name != "default")):
            continue  # near: the default row's decoder; 3D: over half an hour on one core, so the default row's only
        step(folder / target / "report.json", NSQL + ["evaluate", "--real", str(cohort / real), "--synth", str(synth),
                                                     "--model", str(model), "--out", str(folder / target),
                                                     "--c2st", "strong", "--threads", str(threads)], timings, target)


def _auc(test: dict | None) -> str:
    return "–" if test is None else f"{test['auc']:.3f} ± {test['auc_std']:.3f}"


def _dice(report: dict | None) -> str:
    """Label agreement: the segmenter's mean Dice on the synthetic pairs / on held-out real pairs (its ceiling)."""
    dice = (report or {}).get("labels", {}).get("dice")
    return "–" if dice is None else f"{dice['synthetic']['mean']:.3f} / {dice['holdout']['mean']:.3f}"


def row(name: str, runs: Path) -> str:
    """One table row from a variant's reports; a step not run yet shows as –."""
    folder = runs / name
    held_path, train_path = folder / "report/report.json", folder / "report-train/report.json"
    if not held_path.exists():
        return f"| {VARIANTS[name][0]} | (not run) |"
    held = json.loads(held_path.read_text())
    train = json.loads(train_path.read_text()) if train_path.exists() else None
    seconds = json.loads((folder / "seconds.json").read_text()).get("fit")
    model = runs / (VARIANTS[name][2] or name) / "model"
    last = json.loads((model / "history.jsonl").read_text().splitlines()[-1])
    c2st, dist, memo = held["c2st"], held["distribution"], held["memorization"]
    # A --no-texture row's reconstructions are G(u) alone as well; evaluate scores them as "reconstruction_decoder".
    recon_key = "reconstruction_decoder" if "--no-texture" in VARIANTS[name][3] else "reconstruction"
    recon = _auc(train["c2st"][recon_key]) if train else "–"
    mix = held.get("mixing", {}).get("ratio", {})
    labels = [_dice(report) for report in (held, train)]
    cells = [
        VARIANTS[name][0], "–" if seconds is None else f"{seconds:.0f}", f"{last['ssim']:.3f} / {last['dice']:.3f}",
        _auc(c2st["synthetic"]), _auc(train["c2st"]["synthetic"]) if train else "–", recon,
        f"{dist['precision']:.3f} / {dist['recall']:.3f}", f"{held['diversity']['ratio']:.2f}",
        f"{memo['n_flagged']} ({memo['ratio_min']:.3f})",
        f"{mix['median']:.2f}× / {mix['p90']:.2f}×" if mix else "–",
        f"{held['texture']['high_frequency_ratio']:.2f}",
        *labels,
        "passed" if c2st["controls"]["passed"] and (train is None or train["c2st"]["controls"]["passed"]) else "FAILED",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| row | fit s | training SSIM / Dice | C2ST vs held-out | C2ST vs training | C2ST reconstructions "
          "| precision / recall | diversity ratio | copies (smallest ratio) | mixing median / worst tenth | HF power "
          "| label Dice, segmenter of held-out scans | label Dice, segmenter of training scans | controls |\n|"
          + " --- |" + " ---: |" * 13 + " --- |")


def table(runs: Path) -> str:
    """The rows run so far under ``runs``, in the order of VARIANTS."""
    return "\n".join([HEADER, *(row(name, runs) for name in VARIANTS if (runs / name).is_dir())])


def figure(out: Path, cohort: Path, runs: Path, columns: int = 6) -> None:
    torch.set_num_threads(1)
    model = load_model(runs / "default" / "model")
    held = load_cohort(cohort / "heldout", model.config.data).images
    rows = [("held-out real", held[np.random.default_rng(1).choice(len(held), columns, replace=False)])]
    for name in VARIANTS:
        if (runs / name / "synth").exists():
            images = read_synthetic(runs / name / "synth", model.geometry, model.config.data)[0]
            rows.append((name, images[np.linspace(0, len(images) - 1, columns).round().astype(int)]))
    image_grid(rows, out, title="held-out real slices, then samples as each row of the ablation writes them")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["run", "table", "figure"])
    parser.add_argument("name", nargs="?", help="run: a row (" + ", ".join(VARIANTS) + "); figure: the PNG to write")
    parser.add_argument("--base", choices=["default", "volume3d"], default="default", help="run: the built-in config of every row")
    parser.add_argument("--cohort", type=Path, default=Path("realistic-cohort"))
    parser.add_argument("--runs", type=Path, default=Path("realistic-runs/ablation"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.what == "run":
        if args.name not in VARIANTS:
            parser.error(f"run needs a row: one of {', '.join(VARIANTS)}")
        run(args.name, args.base, args.cohort, args.runs, args.threads)
    elif args.what == "figure":
        figure(Path(args.name or "ablation.png"), args.cohort, args.runs)
    else:
        print(table(args.runs))


if __name__ == "__main__":
    main()
