"""`nsql-med benchmark`: NeuroSQL against a VAE, a GAN and a DDPM at the same wall-clock budget.

Every method gets the same preprocessed training tensor, the same device and the same
training budget, and is scored by the same `evaluate.score` against the training set and
against subjects it never saw. Sampling is timed separately, per sample. With several
seeds the whole experiment (hold-out split, initialisation, sampling) is repeated and
every number is reported as mean ± standard deviation across seeds.
"""
from __future__ import annotations

import dataclasses
import json
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import matplotlib.pyplot as plt
import numpy as np
import torch
from rich.table import Table
from torch import Tensor

from neurosql_med.evaluation.baselines import Generative
from neurosql_med.evaluation.baselines.ddpm import DDIM_STEPS, DDPM
from neurosql_med.evaluation.baselines.gan import GAN
from neurosql_med.evaluation.baselines.vae import VAE
from neurosql_med.config import Config, load_config, override
from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.errors import UserError
from neurosql_med.evaluation.c2st import blurred, two_sample_test
from neurosql_med.evaluation.evaluate import sample_ids, score, value_at
from neurosql_med.evaluation.options import CLASSIFIERS, BenchmarkOptions, Classifier
from neurosql_med.evaluation.texture import texture
from neurosql_med.io.files import write_text
from neurosql_med.engine.lattice import reference_draws
from neurosql_med.metrics import TAU
from neurosql_med.evaluation.splits import split_by_subject
from neurosql_med.io.model import load_model
from neurosql_med.viz.plots import draw_grid, grid_columns, save_figure
from neurosql_med.runtime import resolve_device
from neurosql_med.engine.residual import texture_seeds
from neurosql_med.synthesis.sampling import decode_batched
from neurosql_med.training.budget import fit_in_budget

SHOWN = 8
MEMORY_CPU = "peak resident memory (Linux VmHWM, reset before training) minus resident memory at the start of training"
MEMORY_CPU_FALLBACK = "growth of the process's peak resident memory (ru_maxrss) during training; 0 when an earlier step peaked higher"
MEMORY_CUDA = "torch.cuda.max_memory_allocated during training"


def _under(prefix: str, *columns: tuple[str, str, str]) -> tuple[tuple[str, str, str], ...]:
    """Columns whose keys lie under ``prefix`` in a run record (the scores on the training or held-out scans)."""
    return tuple((f"{prefix}.{key}", label, reading) for key, label, reading in columns)


# (key in a run record, column label, how to read it): the table, report and figure columns
COLUMNS = (
    ("parameters", "params", ""), ("epochs", "epochs", ""), ("train_seconds", "train s", ""),
    ("sample_ms", "ms/sample", "lower"), ("peak_memory_mb", "peak MB", "lower"),
    *_under("train", ("fidelity.mae", "MAE→train", "lower"), ("fidelity.ssim", "SSIM→train", "higher"),
            ("fidelity.psnr", "PSNR→train", "higher"), ("coverage.covered", "covered train", "higher"),
            ("diversity.ratio", "diversity ratio", "≈1"),
            ("distribution.precision", "precision", "higher"), ("distribution.recall", "recall", "higher"),
            ("memorization.fraction_flagged", "copies", "lower")),
    *_under("holdout", ("fidelity.mae", "MAE→held-out", "lower"), ("fidelity.ssim", "SSIM→held-out", "higher"),
            ("coverage.covered", "covered held-out", "higher"), ("distribution.precision", "precision held-out", "higher"),
            ("distribution.recall", "recall held-out", "higher")),
    ("c2st.auc", "C2ST AUC", "≈0.5"), ("c2st_reconstruction.auc", "C2ST AUC recon", "≈0.5"),
    ("c2st_blur.auc", "C2ST blur control", "≈1"),
    ("texture.high_frequency_ratio", "HF power ratio", "≈1"), ("texture.gradient_ratio", "gradient ratio", "≈1"),
)
PLOTTED = ("train.fidelity.mae", "train.fidelity.ssim", "train.coverage.covered", "train.diversity.ratio",
           "train.distribution.recall", "train.memorization.fraction_flagged", "holdout.fidelity.mae",
           "holdout.coverage.covered", "c2st.auc", "texture.high_frequency_ratio")
PER_SAMPLE = ("ratios", "nearest", "train_ratios")  # memorization vectors left out of benchmark.json
REFERENCE = "real held-out"  # the summary row of real held-out samples scored like a method's samples


class NeuroSQL:
    """NeuroSQL through `train.fit`, so the benchmark measures exactly what `nsql-med fit` ships.

    The fit is `budget.fit_in_budget` with ``fill``: two timed epochs, then the epoch total
    that fills what is left of the budget, so the cosine schedule ends with it. The run
    ends within half an epoch of the budget either way, where the baselines end within
    one step. The probe counts against the budget.
    """

    def __init__(self, cfg: Config, cohort: Cohort, folder: Path):
        self.cfg, self.cohort, self.folder = cfg, cohort, folder

    def fit(self, images: Tensor, budget_seconds: float, seed: int, device: torch.device) -> dict:
        cohort = dataclasses.replace(self.cohort, images=images)
        started = time.monotonic()
        cfg = override(self.cfg, train__seed=seed, train__device=device.type, train__max_minutes=budget_seconds / 60)
        result = fit_in_budget(cohort, cfg, self.folder, force=True, show_progress=False, fill=True)
        if result.interrupted:  # fit turns Ctrl-C into a partial model folder; the benchmark stops instead
            raise KeyboardInterrupt
        self.model = load_model(self.folder, device)
        steps = result.epochs * math.ceil(len(images) / self.cfg.train.batch_size)
        return {"epochs": result.epochs, "steps": steps, "seconds": time.monotonic() - started}

    def sample(self, n: int, seed: int) -> Tensor:
        z, _ = reference_draws(np.arange(n), self.model.latent_dim, self.model.lattice_kind, seed)
        return decode_batched(self.model, z, texture_seeds(seed, np.arange(n)))

    def parameter_count(self) -> int:
        return self.model.generator.parameter_count()


def build_method(name: str, cfg: Config, train: Cohort, folder: Path) -> Generative:
    if name == "neurosql":
        return NeuroSQL(cfg, train, folder)
    return {"vae": VAE, "gan": GAN, "ddpm": DDPM}[name](cfg)


class PeakMemory:
    """Peak memory of a block in MB, measured the only ways that see torch's allocations.

    tracemalloc does not see them. On a GPU the CUDA allocator's peak; on a CPU the
    kernel's resident-set high-water mark, reset at the start (Linux /proc/self/clear_refs),
    less the resident set then. Where the reset is unavailable, the growth of the
    process's lifetime peak (ru_maxrss), which misses whatever an earlier step already
    reached. ``how`` says which was used.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.how = MEMORY_CUDA if device.type == "cuda" else MEMORY_CPU if _reset_rss_peak() else MEMORY_CPU_FALLBACK

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        elif self.how == MEMORY_CPU:
            _reset_rss_peak()
            self.start = _proc_status_kb("VmRSS") * 1024
        else:
            self.start = _max_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.how == MEMORY_CPU:
            peak = _proc_status_kb("VmHWM") * 1024
        else:
            peak = _max_rss()
        self.mb = max(0, peak - self.start) / 2**20


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _max_rss() -> int:
    """The process's lifetime peak resident memory in bytes (ru_maxrss is in KB, except on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _proc_status_kb(field: str) -> int:
    line = next(li for li in Path("/proc/self/status").read_text().splitlines() if li.startswith(field + ":"))
    return int(line.split()[1])


class BenchmarkResult(TypedDict):
    """benchmark.json: per seed the split and one record per method, the real held-out reference, the summary."""

    settings: dict
    splits: dict[str, dict]
    runs: dict[str, list[dict]]
    reference: list[dict]
    metric_settings: dict
    summary: dict


@dataclasses.dataclass(frozen=True)
class Trial:
    """What every method's run shares: the config, the device, the budget, the yardsticks and where models go."""

    cfg: Config
    device: torch.device
    out: Path
    memory: PeakMemory
    n_samples: int
    budget_minutes: float
    say: Callable[[str], None]
    classifier: Classifier  # the C2ST's: every test of a run, the controls included, uses the same one


def run_benchmark(options: BenchmarkOptions, *, log: Callable[[str], None] | None = None) -> BenchmarkResult:
    """Train and score every method once per seed; writes benchmark.json/.md/.png to --out and returns the result.

    ``seeds`` (a list) repeats the experiment and overrides ``seed``. Without ``holdout``
    (a folder of other subjects' scans) ``holdout_fraction`` of the subjects is held out,
    drawn anew for each seed. ``c2st`` names the classifier of every C2ST (evaluation/c2st.py):
    "strong", the judge, by default; "fast" for a first look. ``log`` receives progress lines.
    """
    o = options
    scans, holdout, holdout_fraction, config, budget_minutes, n_samples = (
        o.scans, o.holdout, o.holdout_fraction, o.config, o.budget_minutes, o.n_samples)
    seeds = list(o.seeds) if o.seeds is not None else [o.seed]
    methods = list(o.methods)
    cfg = override(load_config(config), data__mode=o.mode)
    dev = resolve_device(o.device)
    cohort = load_cohort(scans, cfg.data)
    fixed_holdout = None if holdout is None else _holdout_cohort(holdout, cohort, cfg)
    trial = Trial(cfg, dev, Path(o.out), PeakMemory(dev), n_samples, budget_minutes, log or (lambda message: None),
                  CLASSIFIERS[o.c2st])
    result: dict = {
        "settings": {
            "scans": str(scans), "holdout": None if holdout is None else str(holdout),
            "holdout_fraction": None if holdout is not None else holdout_fraction,
            "config": str(config), "mode": cohort.geometry.mode, "sample_shape": cohort.geometry.sample_shape,
            "methods": methods, "budget_minutes": budget_minutes, "n_samples": n_samples, "seeds": seeds,
            "device": str(dev), "threads": torch.get_num_threads(), "memory": trial.memory.how, "tau": TAU,
            "ddim_steps": DDIM_STEPS, "c2st": trial.classifier.describe() + f", {trial.classifier.repeats} seeds",
        },
        "splits": {},
        "runs": {m: [] for m in methods},
        "reference": [],
    }
    shown: dict[str, Tensor] = {}
    for s in seeds:
        train, held = (cohort, fixed_holdout) if fixed_holdout is not None else split_by_subject(cohort, holdout_fraction, s)
        _run_seed(result, shown, trial, train, held, s)
    result["summary"] = summarize(result["runs"] | {REFERENCE: result["reference"]})
    final = BenchmarkResult(**result)
    write_outputs(trial.out, final, shown)
    return final


def _holdout_cohort(holdout: str | Path, cohort: Cohort, cfg: Config) -> Cohort:
    held = load_cohort(holdout, cfg.data)
    if shared := set(cohort.subjects) & set(held.subjects):
        raise UserError(f"subject(s) {', '.join(sorted(shared))} are in both the training and the hold-out folder")
    return held


def _run_seed(result: dict, shown: dict[str, Tensor], trial: Trial, train: Cohort, held: Cohort, seed: int) -> None:
    """Every method on one split, added to ``result``; the first seed's samples go to ``shown`` for the figure."""
    result["splits"][str(seed)] = {
        "train_subjects": sorted(set(train.subjects)), "holdout_subjects": sorted(set(held.subjects)),
        "train_samples": len(train), "holdout_samples": len(held),
    }
    shown.setdefault("training", train.images[torch.linspace(0, len(train) - 1, SHOWN).long()])
    for name in result["runs"]:
        trial.say(f"seed {seed}: training {name} for {trial.budget_minutes:g} min on {len(train)} samples")
        record, synth, metric_settings = _run_one(name, trial, train, held, seed)
        result["runs"][name].append(record)
        result.setdefault("metric_settings", metric_settings)
        shown.setdefault(name, synth[:SHOWN])
        trial.say(f"seed {seed}: {name} done: {record['epochs']:.1f} epochs, MAE to train {record['train']['fidelity']['mae']:.4f}")
    blur = two_sample_test(train.images, train.subjects, blurred(train.images), train.subjects, seed=seed,
                           spec=trial.classifier)
    result["reference"].append({"seed": seed, "train": _scores(train, held.images, sample_ids(held))[0],
                                **_realism(train, held.images, held.subjects, seed, trial.classifier), "c2st_blur": blur})


def _realism(train: Cohort, images: Tensor, groups: list[str], seed: int, spec: Classifier) -> dict:
    """C2ST of ``images`` (grouped by ``groups``) against the training samples, and the texture ratios."""
    ratios = texture(train.images, images)
    return {
        "c2st": two_sample_test(train.images, train.subjects, images, groups, seed=seed, spec=spec),
        "texture": {key: ratios[key] for key in ("high_frequency_ratio", "gradient_ratio")},
    }


def _run_one(name: str, trial: Trial, train: Cohort, held: Cohort, seed: int) -> tuple[dict, Tensor, dict]:
    """One method, one seed: the run record, its samples and the metric settings `score` used."""
    method = build_method(name, trial.cfg, train, trial.out / "models" / f"{name}-seed{seed}")
    with trial.memory:
        trained = method.fit(train.images, trial.budget_minutes * 60, seed, trial.device)
    n = trial.n_samples
    started = time.perf_counter()
    synth = method.sample(n, seed)
    sample_seconds = time.perf_counter() - started
    ids = [f"{name}-{i:04d}" for i in range(n)]
    train_scores, metric_settings = _scores(train, synth, ids)
    scores = {"train": train_scores, "holdout": _scores(held, synth, ids)[0]}
    record = {
        "seed": seed,
        "epochs": trained["epochs"],
        "steps": trained["steps"],
        "train_seconds": trained["seconds"],
        "sample_ms": 1000 * sample_seconds / n,
        "parameters": method.parameter_count(),
        "peak_memory_mb": trial.memory.mb,
        **scores,
        **_realism(train, synth, ids, seed, trial.classifier),
    }
    if isinstance(method, NeuroSQL):  # the model's own share of the gap: G(u_σ(i)) and its texture against x_i
        record["c2st_reconstruction"] = two_sample_test(train.images, train.subjects, method.model.sampled_reconstructions(),
                                                        train.subjects, seed=seed, spec=trial.classifier)
    return record, synth, metric_settings


def _scores(real: Cohort, synth: Tensor, ids: list[str]) -> tuple[dict, dict]:
    """``evaluate``'s scores of ``synth`` against ``real`` without per-sample vectors, and the metric settings."""
    side = score(real.images, sample_ids(real), synth, ids, tau=TAU)
    settings = side.pop("settings")
    del side["holdout"]
    for key in PER_SAMPLE:
        side["memorization"].pop(key)
    return side, settings


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per method and column: mean, standard deviation across seeds (0 for one seed) and the values."""
    summary: dict = {}
    for name, records in runs.items():
        summary[name] = {}
        for key, _, _ in COLUMNS:
            values = [v for v in (value_at(r, key) for r in records) if v is not None]
            summary[name][key] = {
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": values,
            }
    return summary


def _cell(stat: dict, key: str) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None:
        return "n/a"
    if key == "parameters":
        return f"{mean / 1e6:.2f} M"
    text = f"{mean:.3g}" if key != "train.memorization.fraction_flagged" else f"{mean:.1%}"
    if std:
        text += f" ± {std:.2g}" if key != "train.memorization.fraction_flagged" else f" ± {std:.1%}"
    return text


def _rows(result: BenchmarkResult) -> list[list[str]]:
    return [[name] + [_cell(stats[key], key) for key, _, _ in COLUMNS] for name, stats in result["summary"].items()]


def _title(result: BenchmarkResult) -> str:
    s = result["settings"]
    seeds = f"{len(s['seeds'])} seeds, mean ± sd" if len(s["seeds"]) > 1 else f"seed {s['seeds'][0]}"
    return f"{s['budget_minutes']:g}-minute training budget per method on {s['device']}, {s['n_samples']} samples each ({seeds})"


def benchmark_table(result: BenchmarkResult) -> Table:
    """One row per metric and one column per method, so it fits an 80-column terminal."""
    table = Table(title=_title(result))
    table.add_column("metric")
    table.add_column("reading")
    rows = _rows(result)
    for row in rows:
        table.add_column(row[0], justify="right")
    for i, (_, label, reading) in enumerate(COLUMNS, start=1):
        table.add_row(label, reading, *(row[i] for row in rows))
    return table


def benchmark_markdown(result: BenchmarkResult) -> str:
    s, m = result["settings"], result["metric_settings"]
    header = ["method"] + [f"{label} ({reading})" if reading else label for _, label, reading in COLUMNS]
    splits = result["splits"]
    first = next(iter(splits.values()))
    lines = [
        "# nsql-med benchmark",
        "",
        _title(result) + ".",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(COLUMNS),
        *("| " + " | ".join(row) + " |" for row in _rows(result)),
        "",
        "## How to read it",
        "",
        f"- Data: {s['scans']} ({s['mode']}, samples {' x '.join(map(str, s['sample_shape']))}); "
        f"{first['train_samples']} training and {first['holdout_samples']} held-out samples"
        + (f" (first seed; {s['holdout_fraction']:.0%} of subjects held out per seed, never split across sides)."
           if s["holdout"] is None else f" from {s['holdout']}."),
        "- train s: wall-clock training time: the budget plus at most one step (NeuroSQL: within half an "
        "epoch of it, plus its set-up and model-folder writes); sampling is timed separately.",
        f"- Distances: {m['distance']}. MAE/SSIM/PSNR: each synthetic sample against its nearest real one; "
        "covered: share of real samples with a synthetic one nearer than their nearest real neighbour.",
        "- Nearest-real MAE and SSIM alone reward blank images (the near-empty edge slices are real images too): "
        "read them with precision, recall and the diversity ratio (far above 1: the samples are all alike).",
        f"- {REFERENCE}: the held-out subjects' real samples scored against the training set as if they were "
        "a method's samples: what genuinely new anatomy scores. Nearest-real SSIM above it means samples collapsed "
        "onto typical training images; copies above it mean memorization.",
        f"- precision/recall: {m['feature_extractor']} features, k = {m['k']}. copies: synthetic samples closer "
        f"to a training sample than τ = {s['tau']} x the median training nearest-neighbour distance.",
        f"- DDPM samples with {s['ddim_steps']} deterministic DDIM steps. Peak memory: {s['memory']}.",
        f"- C2ST ({s['c2st']}): a CNN given each image and its Laplacian, trained to tell the samples from the training "
        "samples, cross-validated by subject, AUC averaged over seeds (evaluation/c2st.py); 0.5 = indistinguishable. "
        "recon: NeuroSQL's reconstructions G(u_σ(i)), with its residual texture, against their own images. "
        f"{REFERENCE}'s AUC is the real-vs-real control (must be near 0.5), its blur control real images against "
        "themselves blurred by σ = 0.5 px (must be near 1). HF power ratio: synthetic / real radial power above 0.25 cycles/px; "
        "gradient ratio: mean gradient magnitude, synthetic / real.",
        "",
    ]
    return "\n".join(lines)


def benchmark_figure(path: Path, result: BenchmarkResult, shown: dict[str, Tensor]) -> None:
    """Samples of every method side by side (first seed), above bar charts of the main metrics."""
    rows = list(shown.items())
    columns = grid_columns(rows)
    fig = plt.figure(figsize=(max(12.0, 1.3 * columns), 1.4 * len(shown) + 5.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.4 * len(shown), 5.0])
    draw_grid(top, rows, title=_title(result))
    names = list(result["summary"])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bars = bottom.subplots(2, math.ceil(len(PLOTTED) / 2), squeeze=False).flatten()
    labels = {key: (label, reading) for key, label, reading in COLUMNS}
    for ax, key in zip(bars, PLOTTED):
        stats = [result["summary"][n][key] for n in names]
        means = [st["mean"] if st["mean"] is not None else np.nan for st in stats]
        palette = ["0.6" if n == REFERENCE else colors[i % len(colors)] for i, n in enumerate(names)]
        ax.bar(names, means, yerr=[st["std"] for st in stats], color=palette, capsize=3)
        label, reading = labels[key]
        ax.set_title(f"{label} ({reading})", fontsize=9)
        if key == "train.diversity.ratio":
            ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.tick_params(axis="x", labelsize=8, rotation=30)
    save_figure(fig, path)


def write_outputs(out: Path, result: BenchmarkResult, shown: dict[str, Tensor]) -> None:
    write_text(out / "benchmark.json", json.dumps(result, indent=2, allow_nan=False))
    write_text(out / "benchmark.md", benchmark_markdown(result))
    benchmark_figure(out / "benchmark.png", result, shown)
