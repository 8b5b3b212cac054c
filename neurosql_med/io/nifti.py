"""Synthetic images as NIfTI files that say what they are, inside and beside the image.

Every file carries the training geometry, a `descrip` tag and the full provenance as a
header extension, so the label survives even when the sidecar gets lost.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from neurosql_med.io.files import atomic_path, sha256_file
from neurosql_med.io.geometry import Geometry

INTENSITY_MAX = 4095  # stored as 12-bit int16, the range of most MR scanners' T1 output
PROVENANCE_ECODE = "comment"  # NIfTI extension code 6: free text, here the provenance JSON


def to_nifti(sample: np.ndarray, geometry: Geometry, descrip: str, provenance: dict) -> nib.Nifti1Image:
    """A sample in [0, 1] as an int16 NIfTI image placed where the training data sat."""
    data = np.rint(np.clip(geometry.as_volume(sample), 0, 1) * INTENSITY_MAX).astype(np.int16)
    affine = geometry.sample_affine()
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_qform(affine, code=2)  # aligned to an anatomical reference (the training cohort)
    header.set_sform(affine, code=2)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = descrip.encode()[:79]
    header["cal_min"], header["cal_max"] = 0, INTENSITY_MAX
    header.extensions.append(nib.nifti1.Nifti1Extension(PROVENANCE_ECODE, json.dumps(provenance, sort_keys=True).encode()))
    return image


def write_nifti(path: Path, image: nib.Nifti1Image) -> str:
    """Write atomically; return the file's sha256."""
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return sha256_file(path)


def read_provenance(path: Path) -> dict | None:
    """The provenance JSON stored in a NIfTI header extension, if any."""
    for extension in nib.load(path).header.extensions:
        if extension.get_code() == 6:
            try:
                return json.loads(extension.get_content())
            except ValueError:
                return None
    return None


def read_sample(path: Path) -> np.ndarray:
    """A written synthetic image back as float32 in [0, 1] (the model's output scale)."""
    return np.asarray(nib.load(path).dataobj, dtype=np.float32) / INTENSITY_MAX
