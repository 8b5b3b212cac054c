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
from neurosql_med.io.nifti import read_image
from neurosql_med.viz.plots import image_grid


def _display(path: Path) -> np.ndarray:
    """An image scaled to [0, 1] by its robust range, whatever generator wrote it; one-slice volumes become 2D."""
    data = np.squeeze(read_series(path) if path.is_dir() else read_image(path))
    lo, hi = np.percentile(data, [0.5, 99.5])
    return np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1)[None]


def _synthetic_rows(folder: Path, count: int) -> list[tuple[str, list[np.ndarray]]]:
    files = sorted(p for p in folder.rglob("*.nii*") if not p.name.startswith("."))
    files = files or sorted(p for p in folder.rglob("dicom") if p.is_dir())  # a DICOM-only cohort's series
    if not files:
        raise UserError(f"no NIfTI images found in {folder}")
    shown = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(count, len(files)))]
    images = [_display(p) for p in shown]
    return [(f"synthetic ({len(files)})" if i == 0 else "", images[i:i + 8]) for i in range(0, len(images), 8)]


def cohort_preview(folder: str | Path, count: int = 16) -> Path:
    """FOLDER/preview.png: a montage of the folder's images and nothing else."""
    folder = Path(folder)
    rows = _synthetic_rows(folder, count)
    path = folder / "preview.png"
    image_grid(rows, path, title=f"{folder.name}: synthetic samples")
    return path


def reconstruction_preview(folder: str | Path, model_dir: str | Path, out: str | Path, count: int = 16) -> Path:
    """The folder's images beside ``model_dir``'s reconstructions of its training scans, written to ``out``.

    ``out`` must lie outside ``folder``, so real faces never end up inside a cohort.
    """
    folder, out = Path(folder), Path(out)
    if out.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"--out {out} lies inside {folder}; reconstructions show real training scans, "
                        "so write them outside the cohort")
    rows = _synthetic_rows(folder, count)
    model = load_model(model_dir)
    picks = torch.linspace(0, len(model.assignment) - 1, min(8, len(model.assignment))).long().numpy()
    rows.append(("training reconstructions", model.reconstructions()[picks]))
    image_grid(rows, out, title=f"{folder.name}: synthetic samples beside training reconstructions")
    return out
