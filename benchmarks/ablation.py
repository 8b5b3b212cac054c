"""The generator ablation on one cohort build: each switch of generator v2 on and off, one table.

Every row is the default config with one switch (or the default model drawn or textured another
way), fitted on the same training scans with the same seed and epochs, then 500 samples and
`evaluate --c2st strong` twice: against the held-out scans (the sample C2ST and every other
signal) and against the training scans (which adds the reconstruction C2ST).

    python benchmarks/ablation.py run NAME [--cohort realistic-cohort] [--runs realistic-runs/ablation]
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
SAMPLES = 500
STACK_SLICES = 12  # a subject-code model writes stacks of this many slices: SAMPLES // 12 stacks

# name -> (what the row changes, config overrides, the variant whose model it reuses, synthesize flags)
VARIANTS: dict[str, tuple[str, dict, str | None, list[str]]] = {
    "default": ("default (plain decoder, global texture, 16-d codes)", {}, None, []),
    "no-texture": ("default model, `--no-texture` (G(u) alone)", {}, "default", ["--no-texture"]),
    "levels": ("1 slice levels (6 strata)", {"model": {"slice_levels": 6}}, None, []),
    "subjects": ("1 + 2 subject codes", {"model": {"slice_levels": 6, "subject_codes": True}}, None, []),
    "residual": ("3 modulated residual decoder", {"model": {"decoder": "residual", "channels": [128, 64, 32, 16]}},
                 None, []),
    "pyramid": ("4 Laplacian-pyramid L1", {"loss": {"laplacian_weight": 1.0}}, None, []),
    "latent8": ("5 latent dimension 8", {"model": {"latent_dim": 8}}, None, []),
    "near": ("5 default model, draws near the codes (`--near-codes 0.6`)", {}, "default", ["--near-codes", "0.6"]),
    "refiner": ("6 refiner + global texture", {"model": {"texture_mode": "refiner"}}, None, []),
}


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


def run(name: str, cohort: Path, runs: Path, threads: int) -> None:
    _, changes, reuse, flags = VARIANTS[name]
    folder = runs / name
    model = runs / reuse / "model" if reuse else folder / "model"
    finished = model / HASHES  # written last, when a fit completes
    if reuse and not finished.exists():
        sys.exit(f"error: run the {reuse} row first: this row draws from its model")
    folder.mkdir(parents=True, exist_ok=True)
    timings = folder / "seconds.json"
    if reuse is None:
        base = yaml.safe_load(resources.files("neurosql_med.configs").joinpath("default.yaml").read_text())
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump(merged(base, changes), sort_keys=False))
        resume = ["--resume"] if model.exists() else []  # an interrupted fit continues
        step(finished, NSQL + ["fit", str(cohort / "bids"), "--config", str(config), "--out", str(model),
                               "--threads", str(threads)] + resume, timings, "fit")
    n = SAMPLES // STACK_SLICES if changes.get("model", {}).get("subject_codes") else SAMPLES
    synth = folder / "synth"
    step(synth, NSQL + ["synthesize", "--model", str(model), "--n", str(n), "--out", str(synth), "--threads",
                        str(threads)] + flags, timings, "synthesize")
    for target, real in (("report", "heldout"), ("report-train", "bids")):
        if real == "bids" and name == "near":
            continue  # same decoder as the default row: its reconstructions are that row's
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
    return "\n".join([HEADER, *(row(name, runs) for name in VARIANTS)])


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
    parser.add_argument("--cohort", type=Path, default=Path("realistic-cohort"))
    parser.add_argument("--runs", type=Path, default=Path("realistic-runs/ablation"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.what == "run":
        if args.name not in VARIANTS:
            parser.error(f"run needs a row: one of {', '.join(VARIANTS)}")
        run(args.name, args.cohort, args.runs, args.threads)
    elif args.what == "figure":
        figure(Path(args.name or "ablation.png"), args.cohort, args.runs)
    else:
        print(table(args.runs))


if __name__ == "__main__":
    main()
