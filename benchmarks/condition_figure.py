"""The docs' picture of conditional synthesis: the same latents asked for at each level of a covariate.

    python benchmarks/condition_figure.py MODEL [--covariate CDR] [--fixed age=75] [--n 8] [--out docs/conditional-cdr.png]

Sample k of a seed has the same latent whatever it is conditioned on, so each column
shows one synthetic "subject" and each row one level: what changes down a column is what
the condition does.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from neurosql_med.io.model import load_model
from neurosql_med.synthesis.dataset import SyntheticDataset
from neurosql_med.viz.plots import image_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--covariate", default="CDR")
    parser.add_argument("--fixed", default="age=75", help="the other covariates, NAME=VALUE,...")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/conditional-cdr.png"))
    args = parser.parse_args()
    spec = load_model(args.model).condition
    covariate = spec.covariate(args.covariate, "--covariate")
    rows = []
    for level in covariate.levels:
        wanted = ",".join(filter(None, [f"{covariate.name}={level}", args.fixed]))
        data = SyntheticDataset(args.model, n=args.n, seed=args.seed, condition=wanted)
        rows.append((f"{covariate.name} {level}", torch.stack([data[i]["image"].as_tensor() for i in range(args.n)])))
    image_grid(rows, args.out, title=f"same latents, {covariate.name} level by row ({args.fixed})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
