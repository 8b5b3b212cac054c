"""Where does the strong C2ST see the samples of a 2D model? Its samples and held-out slices, probed one way at a time.

    python benchmarks/c2st_probe.py MODEL COHORT PROBE[,PROBE...] [--n 500] [--seed 7]

MODEL is a fitted 2D model folder with a global residual texture (the ablation's default row); COHORT holds bids/
(the model's training scans) and heldout/. Every probe decodes the same ``--n`` fresh draws and runs the strong
two-sample test (`evaluation/c2st.py`, folds grouped by subject) against the held-out slices. Probes:

  as-fitted         the samples as `synthesize` makes them (G(u) + the model's texture)
  blur1             both sides blurred alike (Gaussian, sigma 1 px): is anything left below the fine detail?
  highpass          both sides as x - blur1(x) + 0.5: the fine detail alone
  subject-nearest   the texture refitted per training subject, each sample textured as the subject of its nearest code
  subject-random    the same, a random subject per sample (is matching the acquisition what matters?)
  site-nearest      the texture refitted per site (participants.tsv `site`), the site of the sample's nearest code
  flat-amplitude    the model's texture with the amplitude of the flattest gradient bin everywhere (no extra noise at edges)
  spectral          the texture's spectrum made what the decoder lacks, P(real) - P(G), not the residual's, and its
                    amplitude scaled to add that much power: samples then carry the real power at every frequency
  residual-spectrum the texture refitted with the residual's spectrum (`model.texture_spectrum: residual`)
  label-background  outside the decoded brain (label 0) no texture, and G(u) mapped by the quantiles of the training
                    scans' own background (mostly exactly 0) against their reconstructions' there; inside, as fitted

One thread; each probe takes about 4 minutes on one core of the development machine.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.transforms import GaussianSmooth
from torch import Tensor

from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.engine.model import NeuroSQLModel
from neurosql_med.engine.residual import ResidualTexture, fit_texture, texture_seeds
from neurosql_med.evaluation.c2st import two_sample_test
from neurosql_med.evaluation.options import STRONG
from neurosql_med.io.model import load_model


def blurred(images: Tensor, sigma: float) -> Tensor:
    return torch.stack([GaussianSmooth(sigma=sigma)(image) for image in images]).float()


def background_map(decoded: Tensor, labels: Tensor, images: Tensor, points: int = 1001) -> Callable[[Tensor], Tensor]:
    """A monotone map of decoded intensities outside the brain (label 0) onto the training scans' own intensities there."""
    outside = labels == 0
    levels = np.linspace(0, 1, points)
    source, target = np.quantile(decoded[outside].numpy(), levels), np.quantile(images[outside].numpy(), levels)
    return lambda x: torch.from_numpy(np.interp(x.numpy(), source, target).astype(np.float32))


def sites(cohort: Path, subjects: list[str]) -> list[str]:
    """Each subject's `site` from the training folder's participants.tsv."""
    with (cohort / "bids" / "participants.tsv").open() as table:
        site = {row["participant_id"]: row.get("site") for row in csv.DictReader(table, delimiter="\t")}
    if any(site.get(s) is None for s in subjects):
        raise SystemExit("error: site-nearest needs a `site` column for every subject in bids/participants.tsv")
    return [site[s] for s in subjects]


Probe = Callable[[], Tensor]


def probes(model: NeuroSQLModel, cohort: Path, n: int, seed: int) -> dict[str, Probe]:
    """Each probe: () -> the samples (those in FILTERS are filtered afterwards, with the held-out slices)."""
    z = np.random.default_rng(seed).standard_normal((n, model.latent_dim)).astype(np.float32)
    decoded = torch.cat([model.decode(z[i:i + 64]) for i in range(0, n, 64)])
    seeds = texture_seeds(seed, range(n))
    texture = model.texture
    samples = texture.apply(decoded, seeds)

    @functools.cache
    def training() -> tuple[Cohort, Tensor]:
        """The training slices and their reconstructions G(u_σ(i)), read once for every probe that needs them."""
        return load_cohort(cohort / "bids", model.config.data), model.reconstructions()

    def refit(mask: np.ndarray | None = None, spectrum: str = "residual") -> ResidualTexture:
        """The model's texture fitted again (same strength and cutoff) on all training slices, or those in ``mask``."""
        train, recon = training()
        keep = slice(None) if mask is None else torch.as_tensor(mask)
        return fit_texture(train.images[keep], recon[keep], texture.strength, texture.cutoff, spectrum)

    def per_sample(pick: Callable[[int], ResidualTexture]) -> Tensor:
        return torch.cat([pick(b).apply(decoded[b:b + 1], seeds[b:b + 1]) for b in range(n)])

    def by_nearest_code(groups: str) -> Tensor:
        subjects = training()[0].subjects
        owners = np.array(sites(cohort, subjects) if groups == "site" else subjects)
        textures = {g: refit(owners == g) for g in sorted(set(owners))}
        codes = model.lattice[model.assignment]
        nearest = ((z[:, None, :] - codes[None]) ** 2).sum(-1).argmin(1)
        if groups == "random":
            nearest = np.random.default_rng(seed).integers(len(owners), size=n)
        return per_sample(lambda b: textures[owners[nearest[b]]])

    def label_background() -> Tensor:
        train, recon = training()
        outside = background_map(recon, model.reconstructed_labels(), train.images)(decoded)
        return torch.where(model.decode_with_labels(z)[1] == 0, outside, samples)

    flat = dataclasses.replace(texture, amplitude=texture.amplitude[:, :1].expand_as(texture.amplitude).contiguous())
    return {
        "as-fitted": lambda: samples,
        "blur1": lambda: samples,
        "highpass": lambda: samples,
        "subject-nearest": lambda: by_nearest_code("subject"),
        "subject-random": lambda: by_nearest_code("random"),
        "site-nearest": lambda: by_nearest_code("site"),
        "flat-amplitude": lambda: flat.apply(decoded, seeds),
        "spectral": lambda: refit(spectrum="lacking").apply(decoded, seeds),
        "residual-spectrum": lambda: refit(spectrum="residual").apply(decoded, seeds),
        "label-background": label_background,
    }


# the probes that filter both sides alike, held-out slices and samples
FILTERS: dict[str, Callable[[Tensor], Tensor]] = {
    "blur1": lambda x: blurred(x, 1.0),
    "highpass": lambda x: (x - blurred(x, 1.0) + 0.5).clamp(0, 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("cohort", type=Path)
    parser.add_argument("probes", help="comma-separated")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    if model.config.data.mode != "2d" or not isinstance(model.texture, ResidualTexture):
        parser.error("the probes need a 2D model with the global residual texture (model.texture_mode: global)")
    held = load_cohort(args.cohort / "heldout", model.config.data)
    found = probes(model, args.cohort, args.n, args.seed)
    names = args.probes.split(",")
    if unknown := [name for name in names if name not in found]:
        parser.error(f"unknown probe(s) {', '.join(unknown)}; one of {', '.join(found)}")
    for name in names:
        start = time.perf_counter()
        same = FILTERS.get(name, lambda x: x)
        real, synth = same(held.images), same(found[name]())
        test = two_sample_test(real, held.subjects, synth, [f"sample-{i}" for i in range(len(synth))], spec=STRONG)
        print(f"{name} | strong C2ST AUC {test['auc']:.3f} ± {test['auc_std']:.3f} | {time.perf_counter() - start:.0f} s",
              flush=True)

if __name__ == "__main__":
    main()
