"""Where the model's images sit in scanner space, so synthetic files overlay real ones."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neurosql_med.io.files import write_text


@dataclass
class Geometry:
    mode: str                      # "2d" or "3d"
    shape: list[int]               # preprocessed volume grid (X, Y, Z)
    spacing: list[float]           # voxel size in mm
    affine: list[list[float]]      # RAS voxel-to-world of the volume grid
    slice_axis: int | None = None  # 2d only: axis the slices are cut along
    slice_index: int | None = None  # 2d only: where a synthetic slice is placed

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(np.asarray(self.affine)))

    @property
    def sample_shape(self) -> list[int]:
        """Spatial shape of one model sample (a slice in 2d, the volume in 3d)."""
        if self.mode == "3d":
            return list(self.shape)
        return [s for i, s in enumerate(self.shape) if i != self.slice_axis]

    def sample_affine(self) -> np.ndarray:
        """Affine of one sample written as NIfTI: a 2d sample is a one-slice volume."""
        affine = np.asarray(self.affine, dtype=np.float64)
        if self.mode == "3d":
            return affine
        offset = np.zeros(4)
        offset[self.slice_axis] = self.slice_index
        shifted = affine.copy()
        shifted[:3, 3] = (affine @ (offset + np.array([0, 0, 0, 1])))[:3]
        return shifted

    def as_volume(self, sample: np.ndarray) -> np.ndarray:
        """A sample of ``sample_shape`` as a 3D array (one-slice for 2d)."""
        if self.mode == "3d":
            return sample
        return np.expand_dims(sample, self.slice_axis)

    def to_dict(self) -> dict:
        return {**asdict(self), "orientation": self.orientation, "sample_shape": self.sample_shape}

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "Geometry":
        raw = json.loads(Path(path).read_text())
        fields = {k: raw[k] for k in ("mode", "shape", "spacing", "affine", "slice_axis", "slice_index")}
        return cls(**fields)
