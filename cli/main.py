"""The `nsql-med` command: argument parsing only; every step lives in the library."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.exceptions import Abort, Exit, TyperException

from neurosql_med import __version__
from neurosql_med.config import BUILTIN
from neurosql_med.errors import UserError
from neurosql_med.evaluation.utility import arms as utility_arms

console = Console()
app = typer.Typer(
    name="nsql-med",
    help="Learn from a few dozen brain MRI scans with NeuroSQL and write synthetic cohorts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"nsql-med {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Learn from a few dozen brain MRI scans with NeuroSQL and write synthetic cohorts."""


def main() -> None:
    """Entry point: user errors become one `error:` line and exit status 2."""
    try:
        code = app(standalone_mode=False)  # a command's `typer.Exit(n)` comes back as n here
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except TyperException as exc:  # usage errors: bad option value, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(0)
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


ConfigOpt = typer.Option("default", "--config", "-c", help=f"YAML config file, or a built-in name: {', '.join(BUILTIN)}.")
PatternOpt = typer.Option(None, "--pattern", help="Glob (relative to the folder) choosing the images; overrides the layout's choice.")
StrictOpt = typer.Option(False, "--strict", help="Treat any skipped (unreadable or invalid) scan as an error.")
LabelsOpt = typer.Option(
    None, "--labels",
    help="Tissue label maps: auto (OASIS-1 FSL_SEG, BIDS *_dseg; used when every scan has one), none, "
         "or a glob relative to each scan's folder, e.g. '*_seg.nii.gz'. Default: the config's data.labels (auto).")
ThreadsOpt = typer.Option(0, "--threads", help="CPU threads for torch; 0 = the CPUs available to this process (affinity and cgroup quota).")


def _without_option(args: list[str], name: str) -> list[str]:
    """``args`` less ``name VALUE`` or ``name=VALUE``: the command line to hand on to torchrun."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def _threads(threads: int) -> None:
    from neurosql_med.runtime import configure_threads

    configure_threads(threads)


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="Folder of scans (NIfTI, Analyze .hdr/.img, DICOM series)."),
    pattern: Optional[str] = PatternOpt,
    strict: bool = StrictOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    config: str = ConfigOpt,
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also preprocess as training would and save a PNG of the samples."),
    labels: Optional[str] = LabelsOpt,
    covariates: Optional[Path] = typer.Option(None, "--covariates", help="A TSV/CSV of covariates with a subject column, listed with the dataset's own."),
) -> None:
    """List the scans found, what was skipped and why, the covariates, and (with --preview) what training will see."""
    from neurosql_med.data.covariates import read_covariates, summary
    from neurosql_med.viz.tables import covariate_table, discovery_tables
    from neurosql_med.data.discovery import discover
    from neurosql_med.io.files import check_output_file

    from neurosql_med.config import load_config, override

    data = None
    if preview is not None:  # a bad --preview or config fails before any work
        check_output_file(preview, ".png", "--preview")
        data = override(load_config(config), data__labels=labels).data
    found = discover(path, pattern=pattern, strict=strict, labels=labels or (data.labels if data else "auto"))
    found_covariates = summary(read_covariates(found, covariates), found)
    if as_json:
        print(json.dumps(found.to_json() | {"covariates": found_covariates}, indent=2))
    else:
        for table in discovery_tables(found):
            console.print(table)
        if found_covariates:
            console.print(covariate_table(found_covariates))
    if preview is not None:
        from neurosql_med.data.cohort import load_cohort
        from neurosql_med.viz.plots import preprocessed_preview

        cohort = load_cohort(found, data)
        preprocessed_preview(cohort, preview)
        console.print(f"{len(cohort)} {cohort.geometry.mode} sample(s) of shape {cohort.geometry.sample_shape}; preview: {preview}")


@app.command()
def fit(
    scans: Path = typer.Argument(..., help="Folder of training scans."),
    config: str = ConfigOpt,
    out: Path = typer.Option(Path("nsql-model"), "--out", "-o", help="Model folder to write."),
    mode: Optional[str] = typer.Option(None, "--mode", help="2d (slices) or 3d (volumes)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Number of epochs."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget: two timed epochs fix the epoch count that fits it (at most --epochs), so the schedule completes."),
    latent_dim: Optional[int] = typer.Option(None, "--latent-dim", help="Latent dimension d."),
    lattice: Optional[str] = typer.Option(None, "--lattice", help="gaussian, uniform or center-outward."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted or finished fit in --out."),
    force: bool = typer.Option(False, "--force", help="Replace a model folder nsql-med wrote in --out (never other files)."),
    pattern: Optional[str] = PatternOpt,
    strict: bool = StrictOpt,
    labels: Optional[str] = LabelsOpt,
    threads: int = ThreadsOpt,
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Train data-parallel on N local processes (torchrun; gloo on CPU, nccl on GPUs)."),
    condition: Optional[str] = typer.Option(None, "--condition", help="Covariates to condition on, e.g. CDR,Age,sex (from participants.tsv, the OASIS-1 CSV or --covariates)."),
    covariates: Optional[Path] = typer.Option(None, "--covariates", help="A TSV/CSV of covariates with a subject column; takes priority over the dataset's own tables."),
) -> None:
    """Train NeuroSQL on a folder of scans and write a model folder."""
    if nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be at least 1, got {nproc_per_node}")
    _threads(threads)
    from neurosql_med.data.cohort import load_cohort
    from neurosql_med.training.budget import fit_in_budget
    from neurosql_med.training.train import fit as run_fit
    from neurosql_med.training.train import fit_config
    from neurosql_med.viz.tables import skipped_lines

    cfg = fit_config(
        config, out, resume, force, condition=None if condition is None else condition.split(","),
        data__mode=mode, data__pattern=pattern, data__labels=labels, train__epochs=epochs, train__max_minutes=max_minutes,
        model__latent_dim=latent_dim, model__lattice=lattice, train__device=device, train__seed=seed,
    )
    if nproc_per_node > 1:  # the config and --out are checked here, once, before any process starts
        from neurosql_med.training.distributed import launch

        raise typer.Exit(launch(nproc_per_node, _without_option(sys.argv[1:], "--nproc-per-node"), cfg))
    if cfg.condition is None:
        cohort = load_cohort(scans, cfg.data, strict=strict)
    else:
        from neurosql_med.data.covariates import load_conditioned_cohort

        cohort = load_conditioned_cohort(scans, cfg, strict=strict, covariates=covariates)
        console.print("conditioned on " + ", ".join(cohort.condition_spec.names))
    for line in skipped_lines(cohort.discovery):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"{len(cohort.discovery.scans)} scan(s) → {len(cohort)} {cfg.data.mode} sample(s) of shape {cohort.geometry.sample_shape}")
    if cfg.train.max_minutes is not None and not resume:  # time two epochs, then the epoch count that fits
        result = fit_in_budget(cohort, cfg, out, force=force)
    else:
        result = run_fit(cohort, cfg, out, resume=resume, force=force)
    if result.rank:  # under torchrun, rank 0 reports
        raise typer.Exit(130 if result.interrupted else 0)
    last = result.history[-1] if result.history else {}
    if result.interrupted:
        console.print(f"interrupted after epoch {result.epochs}; checkpoint saved in {out} (continue with --resume)")
        raise typer.Exit(130)
    why = " (time budget reached)" if result.stopped_by_budget else ""
    console.print(
        f"model written to {out}: {result.epochs} epochs{why}, loss {last.get('loss', float('nan')):.4f}, "
        f"SSIM {last.get('ssim', float('nan')):.3f}; see {out / 'recon.png'} and {out / 'loss.png'}"
    )


@app.command()
def synthesize(
    n: Optional[int] = typer.Option(None, "--n", help="Number of synthetic images (with --condition-table: its rows)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (a BIDS derivative dataset)."),
    model: Path = typer.Option(Path("nsql-model"), "--model", "-m", help="Model folder written by `nsql-med fit`."),
    seed: int = typer.Option(0, "--seed", help="Seed of the latent draws; sample k of a seed never changes."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images generated per write step (rounded to the 8-image compute block)."),
    typicality: float = typer.Option(1.0, "--typicality", help="Keep latents within this quantile of the reference radius (0 < Q <= 1)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Replace a cohort nsql-med wrote in --out (never other files)."),
    resume: bool = typer.Option(False, "--resume", help="Keep complete, hash-verified files in --out and write the rest."),
    audit: Optional[Path] = typer.Option(None, "--audit", help="Training scans: flag synthetic images that are near-copies of them."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Copy threshold for --audit (default 0.5)."),
    drop_copies: bool = typer.Option(False, "--drop-copies", help="With --audit: replace flagged images by new draws."),
    format: str = typer.Option("nifti", "--format", help="nifti, dicom (a DICOM series per sample, marked synthetic) or both."),
    threads: int = ThreadsOpt,
    condition: Optional[str] = typer.Option(None, "--condition", help="A conditional model's covariates for every sample, e.g. \"CDR=1,Age=80,sex=F\"; those left out are drawn from the training distribution."),
    condition_table: Optional[Path] = typer.Option(None, "--condition-table", help="TSV/CSV of covariates: one synthetic subject per row."),
    balance: Optional[str] = typer.Option(None, "--balance", help="A categorical covariate whose levels get equal counts, e.g. CDR."),
    texture: bool = typer.Option(True, "--texture/--no-texture", help="Add the model's residual texture to G(u); --no-texture writes the decoder's smooth mean images."),
    levels: Optional[str] = typer.Option(None, "--levels", help="A slice-aware model's relative slice levels in [0, 1], e.g. 0.3,0.5,0.7, which the samples cycle through (default: drawn from the training levels)."),
) -> None:
    """Write a synthetic cohort as NIfTI files (and/or DICOM series) with provenance."""
    _threads(threads)
    from neurosql_med.synthesis.synthesize import synthesize as run

    summary = run(model, out, n, seed=seed, typicality=typicality, batch_size=batch_size, device=device,
                  force=force, resume=resume, audit=audit, tau=tau, drop_copies=drop_copies, format=format,
                  condition=condition, condition_table=condition_table, balance=balance, texture=texture,
                  levels=levels)
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"{summary.written} image(s) written, {summary.kept} kept, in {summary.seconds:.1f} s → {out}")
    if summary.audit is not None:
        a = summary.audit
        console.print(f"memorization audit (tau {a['tau']}): {a['n_flagged']} flagged, {a['n_replaced']} replaced, "
                      f"{a['n_remaining_copies']} left; details in {out / 'audit.json'}")
    console.print(f"preview: {out / 'preview.png'}")


@app.command()
def reproduce(
    file: Path = typer.Argument(..., help="A synthetic image, its JSON sidecar, or a DICOM instance or series folder."),
    model: Path = typer.Option(Path("nsql-model"), "--model", "-m", help="The model folder that made it."),
) -> None:
    """Regenerate one synthetic image (every instance of a DICOM series) and check it is byte-identical (exit 1 if not)."""
    from neurosql_med.synthesis.reproduce import reproduce as run

    identical, recorded, fresh = run(file, model)
    if identical:
        console.print(f"identical: {file} (sha256 {recorded})")
        return
    console.print(f"DIFFERENT: {file}\n  on disk     {recorded}\n  regenerated {fresh}")
    raise typer.Exit(1)


@app.command("export-bundle")
def export_bundle(
    model: Path = typer.Argument(..., help="Model folder written by `nsql-med fit`."),
    out: Path = typer.Option(..., "--out", "-o", help="New (or empty) folder for the MONAI Bundle."),
    authors: str = typer.Option("nsql-med user", "--authors", help="metadata.json `authors`: who trained and shares the model."),
    copyright_: str = typer.Option("Copyright (c) the model's authors", "--copyright", help="metadata.json `copyright`."),
) -> None:
    """Write the model as a MONAI Bundle (run it with `python -m monai.bundle run`)."""
    from neurosql_med.export.bundle import export_bundle as run

    run(model, out, authors=authors, copyright=copyright_)
    console.print(f"MONAI bundle written to {out}; run it with\n"
                  f"  python -m monai.bundle run --config_file {out / 'configs/inference.json'} --bundle_root {out} "
                  f"--n 8 --seed 0 --output_dir synthetic/", soft_wrap=True)


@app.command()
def preview(
    folder: Path = typer.Argument(..., help="A folder of NIfTI images (any cohort)."),
    with_reconstructions: Optional[Path] = typer.Option(
        None, "--with-reconstructions", help="Add this model's reconstructions of its (real) training scans; needs --out."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write instead of FOLDER/preview.png; outside FOLDER."),
) -> None:
    """Write FOLDER/preview.png: a montage of the cohort's images (synthetic only)."""
    from neurosql_med.viz.preview import cohort_preview, reconstruction_preview

    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}")
    if with_reconstructions is None:
        if out is not None:
            raise UserError("--out is for --with-reconstructions; the plain preview is FOLDER/preview.png")
        console.print(f"preview: {cohort_preview(folder)}")
        return
    if out is None:
        raise UserError("--with-reconstructions needs --out PNG outside the folder (real scans stay out of a cohort)")
    console.print(f"preview: {reconstruction_preview(folder, with_reconstructions, out)}")


@app.command()
def evaluate(
    real: Path = typer.Option(..., "--real", help="Folder of real scans (the training data)."),
    synth: Path = typer.Option(..., "--synth", help="Folder of synthetic NIfTI images (any generator)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="The model that made --synth: use its preprocessing and geometry."),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="Real scans never used for training."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write report.json, report.md and its pictures (nearest, distances, spectrum, mixing; tissue with labels) here."),
    config: str = typer.Option("default", "--config", "-c", help="Preprocessing config when no --model is given (path or built-in name)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Copy threshold: flagged when d_syn < tau * median(d_train)."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json to stdout."),
    c2st: str = typer.Option(
        "fast", "--c2st",
        help="Classifier two-sample test, always with its controls (real vs real, real vs blurred): fast (widths "
             "8/16/16, 8 epochs, 2 seeds; tens of seconds on a CPU), strong (16/32/32, 24 epochs, 3 seeds; minutes: "
             "the one to judge a generator by, never to tune it against) or off."),
    no_c2st: bool = typer.Option(False, "--no-c2st", help="Same as --c2st off."),
    threads: int = ThreadsOpt,
    covariates: Optional[Path] = typer.Option(None, "--covariates", help="A conditional model's: the covariate table given to fit --covariates."),
) -> None:
    """Fidelity, coverage, diversity, distribution, texture, a classifier two-sample test, slice mixing, inter-slice coherence and a memorization audit."""
    _threads(threads)
    from neurosql_med.evaluation.evaluate import TAU, report_table
    from neurosql_med.evaluation.evaluate import evaluate as run

    report = run(real, synth, model_dir=model, holdout=holdout, config=config, tau=TAU if tau is None else tau, out=out,
                 covariates=covariates, c2st="off" if no_c2st else c2st)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        console.print(report_table(report))
        if out is not None:
            console.print(f"report written to {out}")


@app.command()
def benchmark(
    scans: Path = typer.Argument(..., help="Folder of training scans."),
    methods: str = typer.Option("neurosql,vae,gan,ddpm", "--methods", help="Comma-separated: neurosql, vae, gan, ddpm."),
    budget_minutes: float = typer.Option(5.0, "--budget-minutes", help="Training wall-clock budget per method (and seed)."),
    n_samples: Optional[int] = typer.Option(None, "--n-samples", help="Synthetic samples scored per method."),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="Folder of held-out scans (default: split by subject)."),
    holdout_fraction: float = typer.Option(0.2, "--holdout-fraction", help="Share of subjects held out when --holdout is not given."),
    mode: Optional[str] = typer.Option(None, "--mode", help="2d or 3d."),
    config: str = ConfigOpt,
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds; reports mean ± spread."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    out: Path = typer.Option(Path("benchmark-out"), "--out", "-o", help="Where benchmark.json/.md/.png go."),
    c2st: str = typer.Option(
        "strong", "--c2st",
        help="The C2ST's classifier, for every method and control: strong (the judge; minutes per test on a CPU) or fast (a first look)."),
    threads: int = ThreadsOpt,
) -> None:
    """Train NeuroSQL, a VAE, a GAN and a DDPM for the same budget on your scans and compare them."""
    _threads(threads)
    from neurosql_med.evaluation.benchmark import N_SAMPLES, benchmark_table, run_benchmark

    try:
        seed_list = None if seeds is None else [int(s) for s in seeds.split(",")]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    result = run_benchmark(
        scans, methods=[m.strip() for m in methods.split(",") if m.strip()], budget_minutes=budget_minutes,
        n_samples=N_SAMPLES if n_samples is None else n_samples, holdout=holdout, holdout_fraction=holdout_fraction,
        mode=mode, config=config, seed=seed, seeds=seed_list,
        device=device, out=out, log=console.print, c2st=c2st,
    )
    console.print(benchmark_table(result))
    console.print(f"written: {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")


def _int_list(text: str, option: str) -> list[int]:
    return _number_list(text, option, int)


def _float_list(text: str, option: str) -> list[float]:
    return _number_list(text, option, float)


def _number_list(text: str, option: str, kind: type) -> list:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise UserError(f"{option} must be comma-separated {what}, got {text!r}") from None


@app.command()
def utility(
    scans: Path = typer.Argument(..., help="Folder of real scans (BIDS with participants.tsv for regress/classify)."),
    task: str = typer.Option(..., "--task", help="segment (the scans' label maps), regress:COLUMN or classify:COLUMN."),
    train_subjects: str = typer.Option("4,8,16", "--train-subjects", help="Comma-separated training-set sizes k (subjects)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds: each draws its own split."),
    synthetic_per_real: str = typer.Option("4", "--synthetic-per-real", help="NeuroSQL cases per real training sample; "
                                           "comma-separated ratios (e.g. 1,2,4,8) run each NeuroSQL arm once per ratio."),
    schedule: str = typer.Option("constant", "--schedule", help="Synthetic share of each batch over training: constant, "
                                 "or decay (from twice the data's share down to 0, so training ends on real scans)."),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="Folder of test subjects' scans (default: drawn per seed)."),
    holdout_fraction: Optional[float] = typer.Option(None, "--holdout-fraction", help="Share of subjects tested when no --holdout (0.25)."),
    steps: int = typer.Option(utility_arms.STEPS, "--steps", help="Optimiser steps of the downstream network, the same in every arm."),
    nsql_steps: int = typer.Option(utility_arms.NSQL_STEPS, "--nsql-steps", help="Generator steps of each NeuroSQL fit (per training set)."),
    config: str = typer.Option("utility", "--config", "-c", help="Preprocessing and NeuroSQL config (path or built-in name)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="2d or 3d."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    out: Path = typer.Option(Path("utility-out"), "--out", "-o", help="Where utility.json/.md/.png (and the NeuroSQL models) go."),
    resume: bool = typer.Option(False, "--resume", help="Continue the grid in --out, skipping finished runs."),
    threads: int = ThreadsOpt,
) -> None:
    """Does adding NeuroSQL scans make a small-data model better, and better than classic augmentation?"""
    _threads(threads)
    from neurosql_med.evaluation.utility.report import utility_table
    from neurosql_med.evaluation.utility.run import run_utility

    if holdout is not None and holdout_fraction is not None:
        raise UserError("--holdout and --holdout-fraction exclude each other: test on a folder or on a drawn share")
    result = run_utility(
        scans, task=task, train_subjects=_int_list(train_subjects, "--train-subjects"), seeds=_int_list(seeds, "--seeds"),
        synthetic_per_real=_float_list(synthetic_per_real, "--synthetic-per-real"), schedule=schedule, holdout=holdout,
        holdout_fraction=0.25 if holdout_fraction is None else holdout_fraction, steps=steps, nsql_steps=nsql_steps,
        config=config, mode=mode, device=device, out=out, resume=resume,
    )
    console.print(utility_table(result))
    console.print(f"written: {out / 'utility.json'}, {out / 'utility.md'}, {out / 'utility.png'}")
