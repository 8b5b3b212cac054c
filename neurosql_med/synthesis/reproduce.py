"""`nsql-med reproduce`: regenerate one synthetic image from its provenance and compare the bytes."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from neurosql_med.errors import UserError
from neurosql_med.io.files import sha256_file
from neurosql_med.io.model import load_model
from neurosql_med.io.nifti import read_provenance
from neurosql_med.runtime import resolve_device
from neurosql_med.synthesis.sampling import Synthesis, decode_one, sidecar_of, versions, write_sample


def reproduce(file: str | Path, model_dir: str | Path) -> tuple[bool, str, str]:
    """Regenerate one image from its provenance; returns (identical, recorded sha, new sha).

    The recorded software versions are written back into the header, so any difference
    in the bytes comes from the pixels, not from a newer version string.
    """
    image, record = _image_and_record(Path(file))
    try:
        info = record["NeuroSQL"]
        k, seed, q = int(info["index"]), int(info["seed"]), float(info["max_typicality"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{file}: provenance lacks the NeuroSQL seed/index/typicality fields") from None
    made_on = info.get("device", "cpu")
    if made_on == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{file} was made on a CUDA GPU; identical bytes need one to reproduce it")
    model = load_model(model_dir, resolve_device(made_on))
    if model.sha256 != info.get("model_sha256"):
        raise UserError(f"{file} was made by model {str(info.get('model_sha256'))[:12]}..., not by {model_dir} ({model.sha256[:12]}...)")
    job = Synthesis(model, k, seed, q)
    draw = decode_one(job, int(info.get("latent_index", k)))
    with tempfile.TemporaryDirectory() as tmp:
        fresh, _ = write_sample(Path(tmp) / image.name, job, k, draw, software=info.get("versions", versions()))
    recorded = sha256_file(image)
    return fresh == recorded, recorded, fresh


def _image_and_record(path: Path) -> tuple[Path, dict]:
    """The image a FILE argument names (itself or the image beside its sidecar) and its provenance."""
    image = path if path.name.endswith(".nii.gz") else path.with_name(path.name.removesuffix(".json") + ".nii.gz")
    side = sidecar_of(image)
    if side.is_file():
        try:
            record = json.loads(side.read_text())
        except ValueError:
            raise UserError(f"{side}: damaged sidecar (not JSON)") from None
    elif image.is_file() and (embedded := read_provenance(image)) is not None:
        record = embedded
    else:
        raise UserError(f"{path}: no nsql-med provenance found (neither a sidecar nor a header extension)")
    if not image.is_file():
        raise UserError(f"{image}: image file not found beside its sidecar")
    return image, record
