"""What the decoder draws and what the texture adds, images only (a label overlay hides both).

    python benchmarks/decoder_figure.py MODEL REAL HELDOUT OUT.png

Rows: held-out real slices; training slices; their reconstructions G(u_σ(i)) alone and with
the residual texture (the pair the reconstruction C2STs compare); fresh draws of the reference
decoded alone and with the texture (as `synthesize` writes them). Six of each, fixed seeds.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.lattice import reference_draws
from neurosql_med.engine.residual import texture_seeds
from neurosql_med.io.model import load_model
from neurosql_med.viz.plots import image_grid

COLUMNS = 6


def main(model_dir: Path, real: Path, heldout: Path, out: Path) -> None:
    torch.set_num_threads(1)
    model = load_model(model_dir)
    train = load_cohort(real, model.config.data).images
    held = load_cohort(heldout, model.config.data).images
    shown = np.random.default_rng(0).choice(len(train), COLUMNS, replace=False)
    z = reference_draws(np.arange(COLUMNS), model.latent_dim, model.lattice_kind, 0)[0]
    rows = [
        ("held-out real", held[np.random.default_rng(1).choice(len(held), COLUMNS, replace=False)]),
        ("training real", train[shown]),
        ("reconstruction G(u)", model.reconstructions()[shown]),
        ("+ texture", model.sampled_reconstructions()[shown]),
        ("fresh draw G(u)", model.decode(z)),
        ("+ texture (as written)", model.sample(z, texture_seeds(0, np.arange(COLUMNS)))[0]),
    ]
    image_grid(rows, out, title="what the decoder draws, and what the residual texture adds")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:5]))
