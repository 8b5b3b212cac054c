"""The memorization audit of a written cohort, and redraws of flagged samples.

Runs after the images are on disk, so it covers resumed cohorts too and memory stays
bounded: images are read back in chunks. A replaced sample keeps its index k but is
decoded from latent index k + r * REDRAW_STRIDE (r = 1, 2, …), which its sidecar
records, so `reproduce` still regenerates it exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from neurosql_med.errors import UserError
from neurosql_med.io.files import write_text
from neurosql_med.evaluation.metrics import TAU, nearest_other, pairwise_mae
from neurosql_med.synthesis.synthesize import Synthesis, decode_one, sidecar_of, write_with_sidecar
from neurosql_med.io.nifti import read_sample

REDRAW_STRIDE = 1 << 32
MAX_REDRAWS = 20


def _nearest(images: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return pairwise_mae(images, train).min(dim=1)


def _read(job: Synthesis, out: Path, ks: list[int]) -> torch.Tensor:
    geometry = job.model.geometry
    arrays = [read_sample(job.image_path(out, k)).reshape(geometry.sample_shape) for k in ks]
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1)


def audit_cohort(out: Path, job: Synthesis, train: torch.Tensor, tau: float = TAU, drop: bool = False, chunk: int = 64) -> dict:
    """Flag written samples closer to a training sample than τ · median(d_train); optionally redraw them."""
    if tau <= 0:
        raise UserError(f"--tau must be positive, got {tau}")
    if len(train) < 2:
        raise UserError("--audit needs at least 2 training samples")
    scale = float(nearest_other(pairwise_mae(train)).median())
    ratios: dict[int, float] = {}
    for start in range(1, job.n + 1, chunk):
        ks = list(range(start, min(start + chunk, job.n + 1)))
        distances, _ = _nearest(_read(job, out, ks), train)
        ratios |= {k: float(d) / scale for k, d in zip(ks, distances)}
    flagged = sorted(k for k, r in ratios.items() if r < tau)
    replaced = []
    if drop:
        for k in flagged:
            replaced.append(_redraw(out, job, train, k, tau, scale))
            ratios[k] = replaced[-1]["ratio"]
    summary = {
        "tau": tau,
        "median_d_train": scale,
        "n_checked": job.n,
        "n_flagged": len(flagged),
        "n_replaced": len(replaced),
        "n_remaining_copies": sum(r < tau for r in ratios.values()),
        "ratio_min": min(ratios.values()),
        "ratio_median": sorted(ratios.values())[len(ratios) // 2],
    }
    report = {**summary, "flagged": [job.label(k) for k in flagged], "replaced": replaced,
              "ratios": {job.label(k): round(r, 5) for k, r in ratios.items()}}
    write_text(out / "audit.json", json.dumps(report, indent=2))
    description_path = out / "dataset_description.json"
    description = json.loads(description_path.read_text())
    description["NeuroSQL"]["audit"] = summary
    write_text(description_path, json.dumps(description, indent=2))
    return report


def _redraw(out: Path, job: Synthesis, train: torch.Tensor, k: int, tau: float, scale: float) -> dict:
    for r in range(1, MAX_REDRAWS + 1):
        latent_index = k + r * REDRAW_STRIDE
        image, z, level = decode_one(job.model, latent_index, job.seed, job.typicality)
        ratio = float(_nearest(image[None], train)[0][0]) / scale
        if ratio >= tau:
            write_with_sidecar(out, job, k, image, z, level, latent_index)
            return {"sample": job.label(k), "latent_index": latent_index, "ratio": ratio}
    raise UserError(
        f"{sidecar_of(job.image_path(out, k)).name}: {MAX_REDRAWS} redraws all sat within tau={tau} of a training "
        "image; the model reproduces its training data (train less, or lower --typicality)"
    )
