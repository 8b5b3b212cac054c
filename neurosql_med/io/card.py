"""MODEL_CARD.md and EVALUATION.md: what a model folder is, told to whoever receives it.

The card is written by `fit` from what the folder already records (config, geometry,
fingerprint, history) and is hashed like every other artifact, so a card cannot be
edited to flatter a model. An evaluation comes later and may be repeated, so
`evaluate --model` writes its numbers to EVALUATION.md beside the card instead: the
hashed files never change and the folder still verifies. Both hold counts, hashes and
scores only, never a path, a file name or a scan id.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from neurosql_med.bounded import read_json
from neurosql_med.config import Config, load_config
from neurosql_med.engine.refiner import CANDIDATES, PATCH
from neurosql_med.io.files import write_text
from neurosql_med.io.geometry import Geometry
from neurosql_med.io.model import (
    CONDITIONS, HISTORY, CONFIG, EVALUATION, FINGERPRINT, GEOMETRY, LEVELS, MODEL_CARD, TEXTURE,
)
from neurosql_med.version import __version__

INTENDED_USE = (
    "Data augmentation and method development: extra training images for segmentation or "
    "classification models, pipeline testing, and teaching, where real scans cannot be shared."
)
LIMITS = (
    "- Not for diagnosis, treatment or any clinical decision: the images show no real person.\n"
    "- A model of a small cohort reproduces that cohort's scanner, protocol, age range and "
    "pathology mix, and its biases; it cannot show anatomy the cohort lacked.\n"
    "- Check samples for near-copies of training scans (`nsql-med synthesize --audit`) before sharing them."
)


def write_model_card(folder: Path, history: Sequence[Mapping], device: str, label_classes: int | None = None) -> Path:
    """Write the card of a model folder whose config, geometry and fingerprint are in place.

    A fit that writes a card has just written new weights, so an evaluation of the old
    ones (EVALUATION.md) no longer describes this model and is removed.
    """
    (folder / EVALUATION).unlink(missing_ok=True)
    sections = [
        "# Model card: nsql-med NeuroSQL generator",
        "Every image this model decodes is synthetic: a T1-weighted brain MRI of no real person.",
        _trained_on(folder, label_classes),
        _how(folder, history, device),
        _reconstruction(history),
        "## Latest evaluation\n\nSee [EVALUATION.md](EVALUATION.md), written by `nsql-med evaluate --model` "
        "(none yet when this file was written by `nsql-med fit`). It names the model sha256 it scored.",
        f"## Intended use\n\n{INTENDED_USE}",
        f"## Limits\n\n{LIMITS}",
    ]
    path = folder / MODEL_CARD
    write_text(path, "\n\n".join(sections) + "\n")
    return path


def _trained_on(folder: Path, label_classes: int | None) -> str:
    fingerprint = read_json(folder / FINGERPRINT)
    geometry = Geometry.load(folder / GEOMETRY)
    lines = [
        "## What it was trained on",
        "",
        f"- {fingerprint['n_scans']} scan(s) giving {fingerprint['n_samples']} {geometry.mode} training sample(s); "
        f"{FINGERPRINT} holds each scan's content sha256 under an anonymous index (no names, no paths)",
        f"- grid {_by(geometry.shape)} voxels of {_by(f'{s:g}' for s in geometry.spacing)} mm, "
        f"orientation {geometry.orientation}; one sample is {_by(geometry.sample_shape)}",
    ]
    if label_classes is not None:
        lines.append(f"- tissue label maps with {label_classes} class(es), background included")
    if (folder / CONDITIONS).is_file():  # a conditional model: G(u, c)
        covariates = read_json(folder / CONDITIONS)["covariates"]
        described = [f"{c['name']} ({', '.join(c['levels'])})" if c["type"] == "categorical"
                     else f"{c['name']} ({c['min']:g} .. {c['max']:g})" for c in covariates]
        lines.append(f"- conditioned on {'; '.join(described)}: ask for these with `synthesize --condition`")
    if (folder / LEVELS).is_file():  # a slice-aware model: G(u, c, p)
        levels = read_json(folder / LEVELS)
        lines.append(f"- slice-aware: the relative slice level ({levels['low']:.2f} .. {levels['high']:.2f} of the brain's "
                     f"extent) is an input, codes are assigned within {levels['bins']} level strata; ask for levels "
                     f"with `synthesize --levels`")
    return "\n".join(lines)


def _how(folder: Path, history: Sequence[Mapping], device: str) -> str:
    cfg = load_config(folder / CONFIG)
    return "\n".join([
        "## How",
        "",
        f"- NeuroSQL: exact optimal-transport assignment of the training samples to a fixed `{cfg.model.lattice}` "
        f"lattice of quantiles of N(0, I_{cfg.model.latent_dim}), alternating with generator regression "
        f"on the assigned pairs (L1 + {cfg.loss.ssim_weight:g} x (1 - SSIM){_laplacian(cfg)})",
        *([f"- generator: modulated residual blocks at every resolution, widths {'-'.join(map(str, cfg.model.channels))}"]
          if cfg.model.decoder == "residual" else []),
        *([_texture(cfg)] if (folder / TEXTURE).is_file() else []),
        f"- config sha256 {cfg.digest()} ({CONFIG}); seed {cfg.train.seed}",
        f"- {len(history)} of {cfg.train.epochs} epoch(s) on {device} (nsql-med {__version__}, torch {torch.__version__}); "
        f"wall-clock times are in {HISTORY}, outside the hashed files, so the same seed gives the same card",
    ])


def _laplacian(cfg: Config) -> str:
    if not cfg.loss.laplacian_weight:
        return ""
    return f" + {cfg.loss.laplacian_weight:g} x Laplacian-pyramid L1 of {cfg.loss.laplacian_levels} levels"


def _texture(cfg: Config) -> str:
    m = cfg.model
    if m.texture_mode == "refiner":
        return (f"- samples are G(u) plus the residual a small network draws from G(u), its label map and a "
                f"white-noise map, trained for {m.refiner_steps} steps by conditional IMLE (each {PATCH}-voxel tile "
                f"of a training image pulls the nearest of {CANDIDATES} drawn candidates towards it), then the global "
                f"residual texture at strength {m.texture:g} ({TEXTURE})")
    if m.texture_mode == "tissue":
        return (f"- samples are G(u) plus a residual texture ({TEXTURE}, strength {m.texture:g}) per tissue: inside each "
                f"class of the sample's own label map (or intensity bin), a Gaussian field with that class's residual "
                f"spectrum above {m.texture_cutoff:g} cycles/voxel, scaled by its rms at each edge strength")
    return (f"- samples are G(u) plus a residual texture ({TEXTURE}, strength {m.texture:g}): a Gaussian field "
            f"with the spectrum of the training residuals above {m.texture_cutoff:g} cycles/voxel, scaled by "
            f"their rms at each decoded intensity and edge strength")


def _reconstruction(history: Sequence[Mapping]) -> str:
    if not history:
        return "## Reconstruction quality\n\nNo epoch was trained."
    last = history[-1]
    return "\n".join([
        "## Reconstruction quality (training set, last epoch)",
        "",
        "| loss | L1 | SSIM |",
        "|---:|---:|---:|",
        f"| {last['loss']:.4f} | {last['l1']:.4f} | {last['ssim']:.3f} |",
    ])


def write_evaluation(folder: Path, report: Mapping, model_sha256: str, when: datetime | None = None) -> Path:
    """EVALUATION.md from an `evaluate` report: its date and the fidelity, diversity and memorization numbers."""
    when = when or datetime.now(timezone.utc)
    counts, f, d, m = report["counts"], report["fidelity"], report["diversity"], report["memorization"]
    held = f" and {counts['holdout']} held-out" if counts.get("holdout") is not None else ""
    rows = [
        ("fidelity", "MAE / SSIM / PSNR (dB) to the nearest real sample",
         f"{_num(f['mae'], '.4f')} / {_num(f['ssim'], '.3f')} / {_num(f['psnr'], '.2f')}"),
        ("diversity", "MS-SSIM within synthetic / within real",
         f"{_num(d['ms_ssim_synthetic'], '.3f')} / {_num(d['ms_ssim_real'], '.3f')}"),
        ("diversity", "ratio synthetic / real (about 1: variety kept)", _num(d["ratio"], ".3f")),
        ("memorization", f"flagged as near-copies (ratio < tau = {m['tau']})",
         f"{m['n_flagged']} ({_num(m['fraction_flagged'], '.1%')})"),
        ("memorization", "smallest / median ratio", f"{_num(m['ratio_min'], '.3f')} / {_num(m['ratio_median'], '.3f')}"),
        ("memorization", "training samples below tau (the baseline)", _num(m["train_fraction_below_tau"], ".1%")),
    ]
    text = "\n".join([
        "# Latest evaluation",
        "",
        f"{when:%Y-%m-%d %H:%M} UTC, `nsql-med evaluate --model`: {counts['synthetic']} synthetic vs "
        f"{counts['real']} real sample(s){held}; model sha256 {model_sha256}.",
        "",
        "| section | metric | value |",
        "|---|---|---:|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
    ])
    path = folder / EVALUATION
    write_text(path, text)
    return path


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _by(values) -> str:
    return " x ".join(str(v) for v in values)
