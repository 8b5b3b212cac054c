"""The memorization audit of a written cohort, and redraws of flagged samples.

Runs after the images are on disk, so it covers resumed cohorts too and memory stays
bounded: images are read back in chunks. A replaced sample keeps its index k but is
decoded from latent index k + r * REDRAW_STRIDE (r = 1, 2, …), which its sidecar
records, so `reproduce` still regenerates it exactly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from neurosql_med.bounded import read_json
from neurosql_med.errors import UserError
from neurosql_med.metrics import TAU, check_tau, nearest_other, pairwise_mae
from neurosql_med.io.files import write_text
from neurosql_med.synthesis.sampling import SAMPLE_BATCH, Synthesis, decode_one, read_written, sidecar_of, write_formats

REDRAW_STRIDE = 1 << 32
MAX_REDRAWS = 20


class Replacement(TypedDict):
    sample: str
    latent_index: int
    ratio: float


class AuditSummary(TypedDict):
    """What dataset_description.json records of the audit."""

    tau: float
    median_d_train: float
    n_checked: int
    n_flagged: int
    n_replaced: int
    n_remaining_copies: int
    ratio_min: float
    ratio_median: float


class AuditReport(AuditSummary):
    """audit.json: the summary, then which samples were flagged and replaced, and every sample's ratio."""

    flagged: list[str]
    replaced: list[Replacement]
    ratios: dict[str, float]


@dataclass(frozen=True)
class CopyTest:
    """Distance to the nearest training image in units of the training set's own median spacing."""

    train: torch.Tensor
    scale: float
    tau: float
    stack_axis: int | None = None  # samples are stacks of training-like slices along this axis (model.subject_codes)

    @classmethod
    def of(cls, train: torch.Tensor, tau: float, stack_axis: int | None = None) -> CopyTest:
        return cls(train, float(nearest_other(pairwise_mae(train)).median()), tau, stack_axis)

    def ratios(self, images: torch.Tensor) -> list[float]:
        """Each sample's distance to its nearest training image over the scale; a stack's is its nearest slice's."""
        count = len(images)
        if self.stack_axis is not None:  # (B, 1, *volume) -> (B * slices, 1, a, b)
            images = images[:, 0].movedim(self.stack_axis + 1, 1).flatten(0, 1)[:, None]
        nearest = pairwise_mae(images, self.train).min(dim=1).values.reshape(count, -1).min(dim=1).values
        return [float(d) / self.scale for d in nearest]


def _read(job: Synthesis, out: Path, ks: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.stack([read_written(job, out, k) for k in ks])).unsqueeze(1)


def audit_cohort(
    out: Path, job: Synthesis, train: torch.Tensor, *, tau: float = TAU, drop: bool = False, chunk: int = SAMPLE_BATCH,
) -> AuditReport:
    """Flag written samples closer to a training sample than τ · median(d_train); optionally redraw them."""
    check_tau(tau)
    if len(train) < 2:
        raise UserError("--audit needs at least 2 training samples")
    test = CopyTest.of(train, tau, job.model.config.data.slice_axis if job.stacked else None)
    ratios: dict[int, float] = {}
    for start in range(1, job.n + 1, chunk):
        ks = list(range(start, min(start + chunk, job.n + 1)))
        ratios |= dict(zip(ks, test.ratios(_read(job, out, ks))))
    flagged = sorted(k for k, r in ratios.items() if r < tau)
    replaced = [_redraw(out, job, test, k) for k in flagged] if drop else []
    for k, replacement in zip(flagged, replaced):
        ratios[k] = replacement["ratio"]
    summary = AuditSummary(
        tau=tau,
        median_d_train=test.scale,
        n_checked=job.n,
        n_flagged=len(flagged),
        n_replaced=len(replaced),
        n_remaining_copies=sum(r < tau for r in ratios.values()),
        ratio_min=min(ratios.values()),
        ratio_median=sorted(ratios.values())[len(ratios) // 2],
    )
    report = AuditReport(**summary, flagged=[job.label(k) for k in flagged], replaced=replaced,
                         ratios={job.label(k): round(r, 5) for k, r in ratios.items()})
    write_text(out / "audit.json", json.dumps(report, indent=2))
    _record_in_description(out, summary)
    return report


def _record_in_description(out: Path, summary: AuditSummary) -> None:
    path = out / "dataset_description.json"
    description = read_json(path)
    description["NeuroSQL"]["audit"] = summary
    write_text(path, json.dumps(description, indent=2))


def _redraw(out: Path, job: Synthesis, test: CopyTest, k: int) -> Replacement:
    for r in range(1, MAX_REDRAWS + 1):
        draw = decode_one(job, k + r * REDRAW_STRIDE, sample=k)
        (ratio,) = test.ratios(draw.image[None])
        if ratio >= test.tau:
            write_formats(out, job, k, draw)
            return Replacement(sample=job.label(k), latent_index=draw.latent_index, ratio=ratio)
    raise UserError(
        f"{sidecar_of(job.image_path(out, k)).name}: {MAX_REDRAWS} redraws all sat within tau={test.tau} of a training "
        f"image; the model reproduces its training data (train less, or {_remedy(job)})"
    )


def _remedy(job: Synthesis) -> str:
    """What draws farther from the training images: a larger --near-codes scale, or for fresh draws a lower --typicality."""
    return "raise --near-codes" if job.near_codes is not None else "lower --typicality"
