"""Where the model's images sit in scanner space, so synthetic files overlay real ones."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neurosql_med.bounded import preview, read_json
from neurosql_med.errors import UserError
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

    def stacked(self, count: int, stride: int) -> Geometry:
        """The 3D grid of ``count`` slices ``stride`` voxels apart along slice_axis, centred on slice_index: where
        the stacks of a 2D model with subject codes (model.subject_codes) sit, at the training in-plane resolution."""
        axis = int(self.slice_axis)
        step = np.eye(4)
        step[axis, axis] = stride
        step[axis, 3] = self.slice_index - stride * (count - 1) / 2
        shape, spacing = list(self.shape), list(self.spacing)
        shape[axis], spacing[axis] = count, spacing[axis] * stride
        return Geometry("3d", shape, spacing, (np.asarray(self.affine, dtype=np.float64) @ step).tolist())

    def to_dict(self) -> dict:
        return {**asdict(self), "orientation": self.orientation, "sample_shape": self.sample_shape}

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "Geometry":
        """Read and check every field: a bad geometry would otherwise surface mid-way through writing images."""
        raw = read_json(path)
        if not isinstance(raw, dict):
            raise UserError(f"{path}: must hold a JSON object")
        missing = [k for k in FIELDS if k not in raw]
        if missing:
            raise UserError(f"{path}: missing key(s) {', '.join(missing)}")
        problem = _problem(raw)
        if problem:
            raise UserError(f"{path}: {problem}")
        return cls(**{k: raw[k] for k in FIELDS})


FIELDS = ("mode", "shape", "spacing", "affine", "slice_axis", "slice_index")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _problem(raw: dict) -> str | None:
    """What is wrong with a geometry's fields, or None; each check guards a later use (slicing, NIfTI headers)."""
    mode, shape, spacing, affine = raw["mode"], raw["shape"], raw["spacing"], raw["affine"]
    if mode not in ("2d", "3d"):
        return f"'mode' must be \"2d\" or \"3d\", got {preview(mode)}"
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and s >= 1 for s in shape)):
        return f"'shape' must be three positive integers, got {preview(shape)}"
    if not (isinstance(spacing, list) and len(spacing) == 3 and all(_is_number(s) and s > 0 for s in spacing)):
        return f"'spacing' must be three positive numbers, got {preview(spacing)}"
    if not (isinstance(affine, list) and len(affine) == 4
            and all(isinstance(row, list) and len(row) == 4 and all(map(_is_number, row)) for row in affine)):
        return "'affine' must be a 4x4 matrix of finite numbers"
    matrix = np.asarray(affine, dtype=np.float64)
    if not np.array_equal(matrix[3], [0, 0, 0, 1]) or np.linalg.det(matrix[:3, :3]) == 0:
        return "'affine' must be an invertible voxel-to-world matrix with last row 0 0 0 1"
    return _slice_problem(mode, shape, raw["slice_axis"], raw["slice_index"])


def _slice_problem(mode: str, shape: list[int], axis: object, index: object) -> str | None:
    if mode == "3d":
        return None if axis is None and index is None else "'slice_axis' and 'slice_index' must be null in 3d"
    if not (_is_int(axis) and 0 <= axis <= 2):
        return f"'slice_axis' must be 0, 1 or 2 in 2d, got {preview(axis)}"
    if not (_is_int(index) and 0 <= index < shape[axis]):
        return f"'slice_index' must be an integer in [0, {shape[axis]}) for slice_axis {axis}, got {preview(index)}"
    return None
