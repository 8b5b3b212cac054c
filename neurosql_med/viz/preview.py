"""`preview.png` for any folder of NIfTI images, with reconstructions for scale when a model is given."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neurosql_med.errors import UserError
from neurosql_med.io.model import load_model
from neurosql_med.io.nifti import read_image
from neurosql_med.viz.plots import image_grid


def _display(path: Path) -> np.ndarray:
    """An image scaled to [0, 1] by its robust range, whatever generator wrote it; one-slice volumes become 2D."""
    data = np.squeeze(read_image(path))
    lo, hi = np.percentile(data, [0.5, 99.5])
    return np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1)[None]


def cohort_preview(folder: str | Path, model_dir: str | Path | None = None, count: int = 16) -> Path:
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*.nii*") if not p.name.startswith("."))
    if not files:
        raise UserError(f"no NIfTI images found in {folder}")
    shown = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(count, len(files)))]
    images = [_display(p) for p in shown]
    rows = [(f"synthetic ({len(files)})" if i == 0 else "", images[i:i + 8]) for i in range(0, len(images), 8)]
    if model_dir is not None:
        model = load_model(model_dir)
        picks = torch.linspace(0, len(model.assignment) - 1, min(8, len(model.assignment))).long().numpy()
        rows.append(("training reconstructions", model.reconstructions()[picks]))
    path = folder / "preview.png"
    image_grid(rows, path, title=f"{folder.name}: synthetic samples" + (" beside training reconstructions" if model_dir else ""))
    return path
