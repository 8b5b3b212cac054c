"""docs/results/realistic-cohort.png: one axial slice and its tissue labels per subject, with age, CDR, site and source.

    python benchmarks/realistic_figure.py realistic-cohort docs/results/realistic-cohort.png
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def main(root: Path, out: Path, count: int = 8) -> None:
    rows = list(csv.DictReader((root / "bids" / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    rows = sorted(rows, key=lambda r: float(r["atrophy"]))[:: max(1, len(rows) // count)][:count]
    fig, axes = plt.subplots(2, len(rows), figsize=(2.1 * len(rows), 5.0), facecolor="black")
    for ax, row in zip(axes.T, rows):
        image = next((root / "bids" / row["participant_id"]).glob("*/anat/*_T1w.nii.gz"))
        labels = next((root / "bids" / "derivatives").rglob(image.name.replace("_T1w", "_dseg")))
        x, y = np.asarray(nib.load(image).dataobj, dtype=np.float32), np.asarray(nib.load(labels).dataobj)
        z = int(np.argmax((y > 0).sum((0, 1))) * 1.1)  # a little above the widest axial slice
        ax[0].imshow(x[:, :, z].T, origin="lower", cmap="gray", vmax=np.percentile(x[x > 0], 99.5))
        ax[1].imshow(y[:, :, z].T, origin="lower", cmap="viridis", vmin=0, vmax=3, interpolation="nearest")
        ax[0].set_title(f"age {row['age']}, CDR {row['CDR']}\nsite {row['site']}, {row['source_brain']}", color="white",
                        fontsize=8)
        for a in ax:
            a.axis("off")
    fig.suptitle("realistic cohort: T1w and tissue labels (CSF, GM, WM), by increasing atrophy", color="white")
    fig.tight_layout()
    fig.savefig(out, dpi=80, facecolor="black")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
