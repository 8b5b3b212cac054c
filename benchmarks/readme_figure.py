"""The README's picture: real training slices with their tissue labels above a synthetic cohort's preview.

    python benchmarks/readme_figure.py SYNTH/preview.png [--scans sample_data] [--config default]
        [--n 8] [--caption TEXT] [--out docs/real-vs-synthetic.png]

The real row is what training sees: the scans through the model config's preprocessing,
evenly spaced slices, each with its label map drawn over it the way a labelled cohort's
`preview.png` draws its synthetic dseg, so the two rows compare like with like.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from neurosql_med.config import load_config
from neurosql_med.data.cohort import load_cohort
from neurosql_med.viz.plots import draw_grid, label_legend, save_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preview", type=Path, help="a labelled synthetic cohort's preview.png")
    parser.add_argument("--scans", type=Path, default=Path("sample_data"))
    parser.add_argument("--config", default="default")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--caption", default="synthetic: slices decoded from fresh codes, each with its decoded tissue labels")
    parser.add_argument("--out", type=Path, default=Path("docs/real-vs-synthetic.png"))
    args = parser.parse_args()
    cohort = load_cohort(args.scans, load_config(args.config).data)
    shown = torch.linspace(0, len(cohort) - 1, args.n).long()
    fig = plt.figure(figsize=(1.5 * args.n, 6.2), facecolor="black")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 2.1])
    draw_grid(top, [("real", cohort.images[shown])], title=f"training scans ({args.scans.name}): preprocessed slices with their tissue labels",
              overlays=[cohort.labels[shown]], classes=len(cohort.label_names))
    label_legend(top, cohort.label_names)
    bottom.patch.set_facecolor("black")
    ax = bottom.subplots()
    ax.imshow(plt.imread(args.preview)), ax.set_axis_off(), ax.set_title(args.caption, color="white", fontsize=11)
    save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
