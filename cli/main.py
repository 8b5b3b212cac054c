"""The `nsql-med` command: argument parsing only; every step lives in the library."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.exceptions import Abort, Exit, TyperException

from neurosql_med import __version__
from neurosql_med.cli.flags import command
from neurosql_med.data.options import InspectOptions
from neurosql_med.errors import UserError
from neurosql_med.evaluation.options import BenchmarkOptions, EvaluateOptions, UtilityOptions
from neurosql_med.options import MODEL_DIR
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.training.options import FitOptions

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


ThreadsOpt = typer.Option(0, "--threads", help="CPU threads for torch; 0 = the CPUs available to this process (affinity and cgroup quota).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object instead of tables.")


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


def _say(line: str) -> None:
    """A line of the library's, printed as written (paths with brackets are no markup)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


@command(app, InspectOptions)
def inspect(options: InspectOptions, as_json: bool = JsonOpt) -> None:
    """List the scans found, what was skipped and why, the covariates, and (with --preview) what training will see."""
    from neurosql_med.config import load_config, override
    from neurosql_med.data.covariates import read_covariates, summary
    from neurosql_med.data.discovery import discover
    from neurosql_med.io.files import check_output_file
    from neurosql_med.viz.tables import covariate_table, discovery_tables

    o, data = options, None
    if o.preview is not None:  # a bad --preview or config fails before any work
        check_output_file(o.preview, ".png", "--preview")
        data = override(load_config(o.config), data__labels=o.labels).data
    found = discover(o.path, pattern=o.pattern, strict=o.strict, labels=o.labels or (data.labels if data else "auto"))
    found_covariates = summary(read_covariates(found, o.covariates), found)
    if as_json:
        print(json.dumps(found.to_json() | {"covariates": found_covariates}, indent=2))
    else:
        for table in discovery_tables(found):
            console.print(table)
        if found_covariates:
            console.print(covariate_table(found_covariates))
    if o.preview is not None:
        from neurosql_med.data.cohort import load_cohort
        from neurosql_med.viz.plots import preprocessed_preview

        cohort = load_cohort(found, data)
        preprocessed_preview(cohort, o.preview)
        console.print(f"{len(cohort)} {cohort.geometry.mode} sample(s) of shape {cohort.geometry.sample_shape}; "
                      f"preview: {o.preview}")


@command(app, FitOptions)
def fit(
    options: FitOptions,
    threads: int = ThreadsOpt,
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Train data-parallel on N local processes (torchrun; gloo on CPU, nccl on GPUs)."),
) -> None:
    """Train NeuroSQL on a folder of scans and write a model folder."""
    if nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be at least 1, got {nproc_per_node}")
    _threads(threads)
    from neurosql_med.training.run import fit_config, fit_scans

    cfg = fit_config(options)
    if nproc_per_node > 1:  # the config and --out are checked here, once, before any process starts
        from neurosql_med.training.distributed import launch

        raise typer.Exit(launch(nproc_per_node, _without_option(sys.argv[1:], "--nproc-per-node"), cfg))
    result = fit_scans(options, cfg, say=_say)
    out = options.out
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


@command(app, SynthesizeOptions)
def synthesize(options: SynthesizeOptions, threads: int = ThreadsOpt) -> None:
    """Write a synthetic cohort as NIfTI files (and/or DICOM series) with provenance."""
    _threads(threads)
    from neurosql_med.synthesis.synthesize import synthesize as run

    summary, out = run(options), options.out
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
    model: Path = typer.Option(MODEL_DIR, "--model", "-m", help="The model folder that made it."),
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


@command(app, EvaluateOptions)
def evaluate(
    options: EvaluateOptions,
    as_json: bool = typer.Option(False, "--json", help="Print report.json to stdout."),
    no_c2st: bool = typer.Option(False, "--no-c2st", help="Same as --c2st off."),
    threads: int = ThreadsOpt,
) -> None:
    """Fidelity, coverage, diversity, distribution, texture, a classifier two-sample test, slice mixing, inter-slice coherence and a memorization audit."""
    _threads(threads)
    from neurosql_med.evaluation.evaluate import report_table
    from neurosql_med.evaluation.evaluate import evaluate as run

    report = run(dataclasses.replace(options, c2st="off") if no_c2st else options)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        console.print(report_table(report))
        if options.out is not None:
            console.print(f"report written to {options.out}")


@command(app, BenchmarkOptions)
def benchmark(options: BenchmarkOptions, threads: int = ThreadsOpt) -> None:
    """Train NeuroSQL, a VAE, a GAN and a DDPM for the same budget on your scans and compare them."""
    _threads(threads)
    from neurosql_med.evaluation.benchmark import benchmark_table, run_benchmark

    result, out = run_benchmark(options, log=console.print), options.out
    console.print(benchmark_table(result))
    console.print(f"written: {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")


@command(app, UtilityOptions)
def utility(options: UtilityOptions, threads: int = ThreadsOpt) -> None:
    """Does adding NeuroSQL scans make a small-data model better, and better than classic augmentation?"""
    _threads(threads)
    from neurosql_med.evaluation.utility.report import utility_table
    from neurosql_med.evaluation.utility.run import run_utility

    result, out = run_utility(options), options.out
    console.print(utility_table(result))
    console.print(f"written: {out / 'utility.json'}, {out / 'utility.md'}, {out / 'utility.png'}")
