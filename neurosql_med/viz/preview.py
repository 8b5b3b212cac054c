"""`preview.png` for any folder of NIfTI images (or synthetic DICOM series); reconstructions of training scans only on request, elsewhere.

A cohort is meant to be shared and its README says no image in it shows a real person,
so the preview inside it shows synthetic images alone. A model's reconstructions of its
training scans are pictures of real people: they are drawn only when asked for, into a
file outside the cohort.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neurosql_med.errors import UserError
from neurosql_med.io.model import load_model
from neurosql_med.io.dicom import read_series
from neurosql_med.io.nifti import read_image, read_labels
from neurosql_med.viz.plots import image_grid

DSEG = "_dseg"  # BIDS suffix of a segmentation: drawn over the image it belongs to, never as an image


def _display(path: Path) -> np.ndarray:
    """An image scaled to [0, 1] by its robust range, whatever generator wrote it; one-slice volumes become 2D."""
    data = np.squeeze(read_series(path) if path.is_dir() else read_image(path))
    lo, hi = np.percentile(data, [0.5, 99.5])
    return np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1)[None]


def _synthetic_rows(folder: Path, count: int) -> tuple[list[tuple[str, list[np.ndarray]]], list | None]:
    """Rows of up to 8 of the folder's images, and per row their dseg label maps (None when the folder has none)."""
    files = sorted(p for p in folder.rglob("*.nii*") if not p.name.startswith(".") and DSEG not in p.name)
    files = files or sorted(p for p in folder.rglob("dicom") if p.is_dir())  # a DICOM-only cohort's series
    if not files:
        raise UserError(f"no NIfTI images found in {folder}")
    shown = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(count, len(files)))]
    images = [_display(p) for p in shown]
    rows = [(f"synthetic ({len(files)})" if i == 0 else "", images[i:i + 8]) for i in range(0, len(images), 8)]
    dsegs = [p.with_name(p.name.replace("_T1w.", DSEG + ".")) for p in shown]
    if not all(d.is_file() and d != p for d, p in zip(dsegs, shown)):
        return rows, None
    labels = [np.squeeze(read_labels(d))[None] for d in dsegs]
    return rows, [labels[i:i + 8] for i in range(0, len(labels), 8)]


def _label_names(folder: Path, overlays: list | None) -> list[str] | None:
    """The class names of dseg.tsv, or plain indices when a folder's dsegs come without one."""
    if overlays is None:
        return None
    table = folder / "dseg.tsv"
    if table.is_file():
        return [line.split("\t")[1] for line in table.read_text().splitlines()[1:] if "\t" in line]
    return [str(k) for k in range(1 + max(int(m.max()) for row in overlays for m in row))]


def cohort_preview(folder: str | Path, count: int = 16) -> Path:
    """FOLDER/preview.png: a montage of the folder's images (with their dseg painted over) and nothing else."""
    folder = Path(folder)
    rows, overlays = _synthetic_rows(folder, count)
    path = folder / "preview.png"
    image_grid(rows, path, title=f"{folder.name}: synthetic samples", overlays=overlays,
               label_names=_label_names(folder, overlays))
    return path


def reconstruction_preview(folder: str | Path, model_dir: str | Path, out: str | Path, count: int = 16) -> Path:
    """The folder's images beside ``model_dir``'s reconstructions of its training scans, written to ``out``.

    ``out`` must lie outside ``folder``, so real faces never end up inside a cohort.
    """
    folder, out = Path(folder), Path(out)
    if out.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"--out {out} lies inside {folder}; reconstructions show real training scans, "
                        "so write them outside the cohort")
    rows, _ = _synthetic_rows(folder, count)
    model = load_model(model_dir)
    picks = torch.linspace(0, len(model.assignment) - 1, min(8, len(model.assignment))).long().numpy()
    rows.append(("training reconstructions", model.reconstructions()[picks]))
    image_grid(rows, out, title=f"{folder.name}: synthetic samples beside training reconstructions")
    return out
