"""`nsql-med reproduce`: regenerate one synthetic image (and its dseg) from its provenance and compare the bytes."""
from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

import torch

from neurosql_med.bounded import preview, read_json
from neurosql_med.errors import UserError
from neurosql_med.io.dicom import read_dicom_provenance, series_files
from neurosql_med.io.files import sha256_file
from neurosql_med.engine.model import NeuroSQLModel
from neurosql_med.io.model import load_model
from neurosql_med.io.nifti import read_provenance
from neurosql_med.runtime import resolve_device
from neurosql_med.synthesis.audit import MAX_REDRAWS, REDRAW_STRIDE
from neurosql_med.synthesis.conditions import ConditionPlan
from neurosql_med.options import NEAR_CODES
from neurosql_med.synthesis.options import MAX_SAMPLES, MAX_SEED
from neurosql_med.synthesis.sampling import (
    Draw, Synthesis, checked_near_codes, decode_one, dseg_of, sidecar_of, synthetic_id, versions,
    write_dicom_sample, write_dseg, write_sample,
)

INSTANCE_NAME = re.compile(r"sub-(synth\d+)_desc-nsql_(T1w_\d+|dseg)\.dcm")


def reproduce(file: str | Path, model_dir: str | Path) -> tuple[bool, str, str]:
    """Regenerate one image from its provenance; returns (identical, recorded sha, new sha).

    The recorded software versions are written back into the header, so any difference
    in the bytes comes from the pixels, not from a newer version string. For a labelled
    model the image's dseg is regenerated and compared too, and both shas are reported.
    A DICOM instance, series folder or series record stands for its whole series (and its
    SEG): see `_reproduce_series`.
    """
    path = Path(file)
    if not path.exists():
        raise UserError(f"{path}: does not exist (name a synthetic image, its sidecar, or a DICOM instance or series folder)")
    if path.is_dir() or path.suffix.lower() == ".dcm" or path.parent.name == "dicom":
        return _reproduce_series(path if path.is_dir() else path.parent, model_dir)
    image, record = _image_and_record(path)
    job, draw, info = _regenerate(record, path, model_dir)
    k = info["index"]
    with tempfile.TemporaryDirectory() as tmp:
        fresh, record = write_sample(Path(tmp) / image.name, job, k, draw, software=info["versions"])
        recorded = sha256_file(image)
        if draw.labels is None:
            return fresh == recorded, recorded, fresh
        dseg = dseg_of(image)
        if not dseg.is_file():
            raise UserError(f"{dseg}: missing; {model_dir} is labelled, so every image has its dseg beside it")
        fresh_dseg, recorded_dseg = write_dseg(Path(tmp) / dseg.name, job, k, draw, record), sha256_file(dseg)
    identical = fresh == recorded and fresh_dseg == recorded_dseg
    return identical, f"{recorded} (dseg {recorded_dseg})", f"{fresh} (dseg {fresh_dseg})"


def _regenerate(record: dict, file: Path, model_dir: str | Path) -> tuple[Synthesis, Draw, dict]:
    """The job and draw a provenance record describes, on the device and from the model that made it."""
    info = checked_provenance(record, file)
    k, seed, q, made_on = info["index"], info["seed"], info["max_typicality"], info["device"]
    if made_on == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{file} was made on a CUDA GPU; identical bytes need one to reproduce it")
    model = load_model(model_dir, resolve_device(made_on))
    if model.sha256 != info.get("model_sha256"):
        raise UserError(f"{file} was made by model {str(info.get('model_sha256'))[:12]}..., not by {model_dir} ({model.sha256[:12]}...)")
    job = Synthesis(model, k, seed, q, plan=_recorded_plan(record, file, model, seed), texture=info["texture"],
                    levels=_recorded_level(info, file, model), near_codes=checked_near_codes(model, info["near_codes"]))
    return job, decode_one(job, info["latent_index"]), info


def _recorded_plan(record: dict, file: Path, model: NeuroSQLModel, seed: int) -> ConditionPlan | None:
    """A conditional model's image is decoded under the condition its provenance records, checked like a request."""
    if model.condition is None:
        return None
    recorded = record.get("Condition")
    if not isinstance(recorded, dict):
        raise UserError(f"{file}: provenance lacks the Condition a conditional model decodes under")
    return ConditionPlan(model.condition, seed, fixed=model.condition.parse(recorded, f"{file}: Condition"))


def _recorded_level(info: dict, file: Path, model: NeuroSQLModel) -> tuple[float] | None:
    """A slice-aware model's image is decoded at the slice level its provenance records."""
    if model.levels is None or model.config.model.subject_codes:  # a stack is decoded at the model's own grid
        return None
    level = info.get("slice_level")
    if type(level) not in (int, float) or not 0 <= level <= 1:
        raise UserError(f"{file}: NeuroSQL.slice_level must be a number in [0, 1] for a slice-aware model, got {level!r}")
    return (float(level),)


def _reproduce_series(folder: Path, model_dir: str | Path) -> tuple[bool, str, str]:
    """Regenerate a DICOM series (and its SEG); identical only if every file is, with the same names and no extra ones.

    The two hashes returned are each the sha256 of the series' sorted "name<TAB>sha256" lines.
    The subject id is read from the instances' names (its zero-padding depends on the cohort size).
    """
    files = series_files(folder)
    if not files:
        raise UserError(f"{folder}: no DICOM files (*.dcm) found")
    job, draw, info = _regenerate(_series_record(folder, files), folder, model_dir)
    named = INSTANCE_NAME.fullmatch(files[0].name)
    subject = named.group(1) if named else synthetic_id(info["index"], info["index"])
    with tempfile.TemporaryDirectory() as tmp:
        fresh, _ = write_dicom_sample(Path(tmp), job, info["index"], draw, software=info["versions"], subject=subject)
    recorded = {f.name: sha256_file(f) for f in files}
    return fresh == recorded, _series_digest(recorded), _series_digest(fresh)


def _series_record(folder: Path, files: list[Path]) -> dict:
    """The series' JSON record if it is there, else the provenance inside its first instance."""
    for side in sorted(folder.glob("*_desc-nsql_T1w.json")):
        return read_json(side)
    record = read_dicom_provenance(files[0])
    if record is None:
        raise UserError(f"{folder}: no nsql-med provenance found (neither a series record nor a private element)")
    return record


def _series_digest(hashes: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}\t{sha}\n" for name, sha in sorted(hashes.items())).encode()).hexdigest()


def _image_and_record(path: Path) -> tuple[Path, dict]:
    """The image a FILE argument names (itself or the image beside its sidecar) and its provenance."""
    image = path if path.name.endswith(".nii.gz") else path.with_name(path.name.removesuffix(".json") + ".nii.gz")
    if image.name.endswith("_dseg.nii.gz"):  # a dseg is checked through the image it belongs to
        image = image.with_name(image.name.replace("_dseg.nii.gz", "_T1w.nii.gz"))
    side = sidecar_of(image)
    if side.is_file():
        record = read_json(side)
    elif image.is_file() and (embedded := read_provenance(image)) is not None:
        record = embedded
    else:
        raise UserError(f"{path}: no nsql-med provenance found (neither a sidecar nor a header extension)")
    if not image.is_file():
        raise UserError(f"{image}: image file not found beside its sidecar")
    return image, record


def checked_provenance(record: object, file: Path) -> dict:
    """The NeuroSQL fields reproduce decodes from, each checked: a sidecar is text anyone can edit.

    Returns them with defaults filled in for fields older files lack (latent_index, device, versions, texture,
    near_codes).
    """
    info = record.get("NeuroSQL") if isinstance(record, dict) else None
    if not isinstance(info, dict):
        raise UserError(f"{file}: provenance lacks the NeuroSQL record")
    fields = {"device": "cpu", "versions": versions(), **info}
    fields.setdefault("latent_index", fields.get("index"))
    last_latent = MAX_SAMPLES + MAX_REDRAWS * REDRAW_STRIDE
    for key, low, high in (("index", 1, MAX_SAMPLES), ("seed", 0, MAX_SEED), ("latent_index", 1, last_latent)):
        value = fields.get(key)
        if type(value) is not int or not low <= value <= high:
            raise UserError(f"{file}: NeuroSQL.{key} must be an integer from {low} to {high}, got {preview(value)}")
    q = fields.get("max_typicality")
    if type(q) not in (int, float) or not 0 < q <= 1:
        raise UserError(f"{file}: NeuroSQL.max_typicality must be a number in (0, 1], got {preview(q)}")
    software = fields["versions"]
    if not (isinstance(software, dict) and all(isinstance(v, str) for v in software.values()) and "nsql-med" in software):
        raise UserError(f"{file}: NeuroSQL.versions must be an object of version strings naming nsql-med")
    if fields["device"] not in ("cpu", "cuda"):
        raise UserError(f"{file}: NeuroSQL.device must be cpu or cuda, got {preview(fields['device'])}")
    near = fields.setdefault("near_codes", None)
    if near is not None and (type(near) not in (int, float) or not NEAR_CODES.holds(near)):
        raise UserError(f"{file}: NeuroSQL.near_codes must be a number {NEAR_CODES.describe()}, got {preview(near)}")
    if not isinstance(fields.setdefault("texture", True), bool):
        raise UserError(f"{file}: NeuroSQL.texture must be true or false, got {preview(fields['texture'])}")
    return {**fields, "max_typicality": float(q)}
