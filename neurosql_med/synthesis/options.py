"""What a synthesis run asks for: `SampleOptions` for any draw of a model, `SynthesizeOptions` to write a cohort.

`SyntheticDataset` and `synthesize` both turn their options into a `Synthesis` job
(`sampling.synthesis_job`), so an item of the dataset and a file of the cohort are decoded
from the same request alike. This module imports no torch: `nsql-med` builds its commands
from it at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from neurosql_med.errors import UserError
from neurosql_med.options import MODEL_DIR, TAU, Options, Range, device_option, near_codes_option, option

MAX_SAMPLES = 1_000_000  # a cohort larger than this is almost surely a typo (and many hours of writing)
MAX_SEED = 2**63 - 1
FORMATS = {"nifti": ("nifti",), "dicom": ("dicom",), "both": ("nifti", "dicom")}  # --format: what each writes


@dataclass(frozen=True, kw_only=True)
class SampleOptions(Options):
    """Which samples: the model, how many, the seed's draws, and what a conditional or slice-aware model is asked for."""

    n: Optional[int] = option(None, "Number of synthetic images (with --condition-table: its rows); for a model "
                                    "with subject codes, of synthetic subjects, each one stack of slices.",
                              limits=Range(1, MAX_SAMPLES))
    model: Path = option(MODEL_DIR, "Model folder written by `nsql-med fit`.", names=("--model", "-m"))
    seed: int = option(0, "Seed of the latent draws; sample k of a seed never changes.", limits=Range(0, MAX_SEED))
    typicality: float = option(1.0, "Keep latents within this quantile of the reference radius (0 < Q <= 1).")
    near_codes: Optional[float] = near_codes_option(
        "0.6 beat fresh draws on recall and level mixing on real anatomy. These samples sit closer to the training "
        "images, so --audit is advised. A slice-aware model picks among its codes at the sample's slice level; not for "
        "conditional models, nor with --typicality below 1.")
    condition: Optional[str] = option(
        None, "A conditional model's covariates for every sample, e.g. \"CDR=1,Age=80,sex=F\"; those left out are "
              "drawn from the training distribution.")
    condition_table: Optional[Path] = option(None, "TSV/CSV of covariates: one synthetic subject per row.")
    balance: Optional[str] = option(None, "A categorical covariate whose levels get equal counts, e.g. CDR.")
    texture: bool = option(True, "Add the model's residual texture to G(u); --no-texture writes the decoder's "
                                 "smooth mean images.", negatable=True)
    levels: Optional[str] = option(
        None, "A slice-aware model's relative slice levels in [0, 1], e.g. 0.3,0.5,0.7, which the samples cycle "
              "through (default: drawn from the training levels; a model with subject codes decodes every subject at its "
              "training slice grid instead).")

    def check(self) -> None:
        if self.n is None and self.condition_table is None:
            raise UserError("--n is required (or --condition-table, whose rows say how many)")
        from neurosql_med.engine.lattice import check_typicality

        check_typicality(self.typicality, "--typicality")
        if self.near_codes is not None and self.typicality < 1:
            raise UserError("--near-codes and --typicality below 1 exclude each other: a draw near a code has no "
                            "reference level to bound")


@dataclass(frozen=True, kw_only=True)
class SynthesizeOptions(SampleOptions):
    """`nsql-med synthesize`: the samples, and how the cohort folder is written (and audited)."""

    out: Path = option(help="Output folder (a BIDS derivative dataset).", names=("--out", "-o"))
    batch_size: int = option(32, "Images generated per write step (rounded to the 8-image compute block).",
                             limits=Range(1))
    device: str = device_option()
    force: bool = option(False, "Replace a cohort nsql-med wrote in --out (never other files).")
    resume: bool = option(False, "Keep complete, hash-verified files in --out and write the rest.")
    audit: Optional[Path] = option(None, "Training scans: flag synthetic images that are near-copies of them.")
    tau: Optional[float] = option(None, f"Copy threshold for --audit (default {TAU}).")
    drop_copies: bool = option(False, "With --audit: replace flagged images by new draws.")
    format: str = option("nifti", "What each sample is written as: a NIfTI image, a DICOM series (marked "
                                  "synthetic) or both.", choices=tuple(FORMATS))

    def check(self) -> None:
        super().check()
        if self.audit is None and (self.drop_copies or self.tau is not None):
            raise UserError("--drop-copies and --tau need --audit SCANS (the training scans to compare against)")
        if self.tau is not None:
            from neurosql_med.metrics import check_tau

            check_tau(self.tau)
