"""Synthetic images as NIfTI files that say what they are, inside and beside the image.

Every file carries the training geometry, a `descrip` tag and the full provenance as a
header extension, so the label survives even when the sidecar gets lost. Every NIfTI
the package reads back goes through `read_image`, so a damaged or 4D file is one
`UserError` naming it wherever it is read.
"""
from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from neurosql_med.bounded import parse_json
from neurosql_med.errors import UserError
from neurosql_med.io.files import atomic_path, sha256_file
from neurosql_med.io.geometry import Geometry

INTENSITY_MAX = 4095  # stored as 12-bit int16, the range of most MR scanners' T1 output
PROVENANCE_ECODE = 6  # NIfTI extension code "comment": free text, here the provenance JSON
# what nibabel and the gzip/zlib layers below it raise for a missing, truncated or foreign file
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)


def to_nifti(sample: np.ndarray, geometry: Geometry, descrip: str, provenance: dict) -> nib.Nifti1Image:
    """A sample in [0, 1] as an int16 NIfTI image placed where the training data sat."""
    data = np.rint(np.clip(geometry.as_volume(sample), 0, 1) * INTENSITY_MAX).astype(np.int16)
    return _placed(data, geometry, descrip, provenance, INTENSITY_MAX)


def labels_to_nifti(
    labels: np.ndarray, classes: int, geometry: Geometry, descrip: str, provenance: dict,
) -> nib.Nifti1Image:
    """A map of class indices 0..classes-1 as a uint8 NIfTI (a BIDS dseg) on exactly the grid of its image."""
    if not 1 <= classes <= 256 or labels.min(initial=0) < 0 or labels.max(initial=0) >= classes:
        raise ValueError(f"a dseg holds class indices 0..{classes - 1} (at most 255)")
    data = geometry.as_volume(labels).astype(np.uint8)
    return _placed(data, geometry, descrip, provenance, classes - 1)


def _placed(data: np.ndarray, geometry: Geometry, descrip: str, provenance: dict, cal_max: int) -> nib.Nifti1Image:
    """``data`` with the training affine, the SYNTHETIC tag and the provenance extension."""
    affine = geometry.sample_affine()
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_qform(affine, code=2)  # aligned to an anatomical reference (the training cohort)
    header.set_sform(affine, code=2)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = descrip.encode()[:79]
    header["cal_min"], header["cal_max"] = 0, cal_max
    header.extensions.append(nib.nifti1.Nifti1Extension(PROVENANCE_ECODE, json.dumps(provenance, sort_keys=True).encode()))
    return image


def write_nifti(path: Path, image: nib.Nifti1Image) -> str:
    """Write atomically; return the file's sha256."""
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return sha256_file(path)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """nibabel reads lazily, so both the header and the pixel reads can meet a damaged file."""
    try:
        yield
    except READ_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: unreadable NIfTI ({reason})") from None


def read_provenance(path: Path) -> dict | None:
    """The provenance JSON stored in a NIfTI header extension, if any."""
    with _reading(path):
        extensions = nib.load(path).header.extensions
    for extension in extensions:
        if extension.get_code() == PROVENANCE_ECODE:
            try:
                return parse_json(extension.get_content(), path)
            except ValueError:
                return None
    return None


def read_image(path: Path) -> np.ndarray:
    """A NIfTI's voxels as float32, 2D or 3D; trailing length-1 axes past the third are dropped."""
    with _reading(path):
        data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise UserError(f"{path}: {data.ndim}D data of shape {tuple(data.shape)} is not a 3D image (or a 2D slice)")
    return data


def read_affine(path: Path) -> np.ndarray:
    """A NIfTI's voxel-to-world affine, from the header alone."""
    with _reading(path):
        return np.asarray(nib.load(path).affine, dtype=np.float64)


def read_labels(path: Path) -> np.ndarray:
    """A written dseg back as int64 class indices."""
    return read_image(path).astype(np.int64)


def read_sample(path: Path) -> np.ndarray:
    """A written synthetic image back as float32 in [0, 1] (the model's output scale)."""
    return read_image(path) / INTENSITY_MAX
