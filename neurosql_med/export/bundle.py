"""A trained model as a MONAI Bundle: the model-zoo format MONAI users share and run.

The bundle's ``models/`` folder is the model folder itself (model.pt, config, geometry,
lattice, assignment, fingerprint, card, hashes), copied and verified, so the bundle
samples through the very code `nsql-med synthesize` runs: `run_inference`, which
``configs/inference.json`` names as its ``_target_``, calls `synthesize` on it, and
the files match the command's byte for byte. Nothing in metadata.json or the README is
a path or a scan id: only counts, hashes and the training geometry.

``metadata.json`` names MONAI's metadata schema by URL, as model-zoo bundles do;
`python -m monai.bundle verify_metadata` downloads it, so nsql-med runs that check only
where a copy of the schema is at hand (see tests/test_bundle.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import monai
import nibabel
import numpy
import torch

from neurosql_med.bounded import read_json_lines
from neurosql_med.errors import UserError
from neurosql_med.engine.model import NeuroSQLModel
from neurosql_med.io.files import make_folder, write_bytes, write_text
from neurosql_med.io.model import EVALUATION, HASHES, HISTORY, LOSS_PLOT, MODEL_CARD, RECON_PLOT, load_model, verify
from neurosql_med.io.nifti import INTENSITY_MAX
from neurosql_med.io.outputs import LOCK, check_output_path, output_lock
from neurosql_med.synthesis.synthesize import SynthesisSummary, synthesize
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.version import __version__

HERE = Path(__file__).parent
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
LICENSE = HERE / "LICENSE-Apache-2.0.txt"
BUNDLE_VERSION = "0.1.0"
MODELS = "models"  # the bundle's model folder, named as model-zoo bundles name it
EXTRAS = (HASHES, HISTORY, LOSS_PLOT, RECON_PLOT)  # copied beside the hashed artifacts; EVALUATION.md only if current
INFERENCE = {
    "imports": [],
    "bundle_root": ".",
    "n": 8,
    "seed": 0,
    "device": "auto",
    "output_dir": "$@bundle_root + '/synthetic'",
    "synthesis": {
        "_target_": "neurosql_med.export.bundle.run_inference",
        "bundle_root": "@bundle_root", "n": "@n", "seed": "@seed", "output_dir": "@output_dir", "device": "@device",
    },
    "run": ["@synthesis"],
}
INTENDED_USE = (
    "Data augmentation and method development (extra training images, pipeline tests, teaching). "
    "Not for diagnosis or any clinical decision: every image is synthetic and shows no real person."
)


def run_inference(bundle_root: str | Path, n: int, seed: int, output_dir: str | Path, device: str = "auto") -> SynthesisSummary:
    """What the bundle's inference.json runs: samples 1..n of ``seed`` from the bundle's model folder.

    A thin call of `synthesize`, so a bundle's cohort is byte-identical to the command's.
    """
    models = Path(bundle_root) / MODELS
    if not (models / HASHES).is_file():
        raise UserError(f"{models}: no nsql-med model folder here; pass the bundle folder as --bundle_root "
                        "or run from inside it")
    return synthesize(SynthesizeOptions(model=models, out=Path(output_dir), n=int(n), seed=int(seed), device=str(device)))


def export_bundle(model_dir: str | Path, out: str | Path, *, authors: str, copyright: str) -> Path:
    """Write the MONAI Bundle of the model in ``model_dir`` into the new or empty folder ``out``."""
    model_dir, out = Path(model_dir), Path(out)
    check_output_path(out, inputs=[model_dir])
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise UserError(f"--out {out} is not empty; choose a new folder for the bundle")
    model = load_model(model_dir)  # verified and checked whole before anything is copied
    with output_lock(out):
        _copy_model(model_dir, out / MODELS, model.sha256)
        write_text(out / "configs/metadata.json", json.dumps(metadata(model, authors, copyright), indent=2) + "\n")
        write_text(out / "configs/inference.json", json.dumps(INFERENCE, indent=2) + "\n")
        write_text(out / "docs/README.md", bundle_readme(out / MODELS))
        write_bytes(out / "LICENSE", LICENSE.read_bytes())
    return out


def _copy_model(source: Path, dest: Path, model_sha256: str) -> None:
    """Copy the model folder's own files, then check the copy verifies to the same hashes."""
    make_folder(dest)
    for name in (*verify(source), *EXTRAS):  # what hashes.json covers (labels.json too, for a labelled model)
        if (source / name).is_file():
            write_bytes(dest / name, (source / name).read_bytes())
    if current_evaluation(source, model_sha256) is not None:
        write_bytes(dest / EVALUATION, (source / EVALUATION).read_bytes())
    if verify(dest) != verify(source):
        raise UserError(f"{source}: changed while it was being copied into the bundle; export again")


def current_evaluation(folder: Path, model_sha256: str) -> str | None:
    """EVALUATION.md's text if it scored this very model (it names the model sha256), else None."""
    path = folder / EVALUATION
    text = path.read_text() if path.is_file() else None
    return text if text is not None and model_sha256 in text else None


def metadata(model: NeuroSQLModel, authors: str, copyright: str) -> dict:
    """configs/metadata.json: the keys MONAI's schema requires, and what the card says, without a path."""
    g, cfg = model.geometry, model.config
    kind = "2D slices" if g.mode == "2d" else "3D volumes"
    return {
        "schema": SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by nsql-med {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nsql-med": __version__, "nibabel": nibabel.__version__},
        "task": f"Unconditional synthesis of T1-weighted brain MRI ({kind}) with NeuroSQL",
        "description": (
            "A NeuroSQL generator (generative model via quantile assignment) trained with nsql-med. It decodes a "
            f"latent vector drawn from N(0, I_{cfg.model.latent_dim}) into a brain image on the training grid; "
            "inference writes N synthetic images as NIfTI with provenance (a BIDS derivative dataset), "
            "byte-identical to `nsql-med synthesize` for the same seed. See docs/README.md for the model card."
        ),
        "authors": authors,
        "copyright": copyright,
        "data_source": "The trainer's own scans; identified by content sha256 in training_data_fingerprint, never by name",
        "data_type": "nibabel",
        "image_classes": "single-channel T1-weighted intensity",
        "intended_use": INTENDED_USE,
        "eval_metrics": _reconstruction_metrics(model.folder),
        "network_data_format": _data_format(model),
        "training_data_fingerprint": model.fingerprint,
        "model_sha256": model.sha256,
        "config_sha256": cfg.digest(),
        "geometry": {"mode": g.mode, "shape": g.shape, "spacing_mm": g.spacing, "orientation": g.orientation,
                     "sample_shape": g.sample_shape},
    }


def _data_format(model: NeuroSQLModel) -> dict:
    """The generator's input (a latent vector) and output (an image in [0, 1]); files are int16 0..INTENSITY_MAX."""
    g, d = model.geometry, model.latent_dim
    latent_range = [0.0, 1.0] if model.lattice_kind == "uniform" else []  # Gaussian draws are unbounded
    image = {"type": "image", "format": "magnitude", "num_channels": 1, "is_patch_data": False,
             "channel_def": {"0": "T1w"}}
    return {
        "inputs": {"latent": {
            "type": "tensor", "format": f"latent ({model.lattice_kind} reference)", "num_channels": d,
            "spatial_shape": [], "dtype": "float32", "value_range": latent_range, "is_patch_data": False,
            "channel_def": {},
        }},
        "outputs": {"pred": {**image, "spatial_shape": g.sample_shape, "dtype": "float32", "value_range": [0, 1]}},
        "post_processed_outputs": {"pred": {
            **image, "spatial_shape": _file_shape(model),
            "dtype": "int16", "value_range": [0, INTENSITY_MAX],
        }},
    }


def _file_shape(model: NeuroSQLModel) -> list[int]:
    """A written file's shape: a 2D sample is stored as a one-slice volume."""
    g = model.geometry
    return [1 if g.mode == "2d" and axis == g.slice_axis else size for axis, size in enumerate(g.shape)]


def _reconstruction_metrics(folder: Path) -> dict:
    """The last epoch's training reconstruction loss and SSIM (history.jsonl)."""
    rows = read_json_lines(folder / HISTORY)
    if not rows:
        return {}
    return {"train_reconstruction_loss": rows[-1]["loss"], "train_reconstruction_ssim": rows[-1]["ssim"]}


def bundle_readme(models: Path) -> str:
    """docs/README.md: what the bundle is, how to run it, then the model card and its latest evaluation."""
    card = (models / MODEL_CARD).read_text()
    evaluation = (models / EVALUATION).read_text() if (models / EVALUATION).is_file() else (
        "# Latest evaluation\n\nNone: the model had not been evaluated (`nsql-med evaluate --model`) when it was exported.\n")
    return "\n".join([
        "# nsql-med NeuroSQL generator (MONAI Bundle)",
        "",
        "A generator of synthetic T1-weighted brain MRI trained with nsql-med. Every image it makes is",
        "synthetic. `models/` is the nsql-med model folder; `models/hashes.json` holds the sha256 of",
        "the weights, config, lattice, assignment, geometry, data fingerprint and model card.",
        "",
        "## Run",
        "",
        "```bash",
        "pip install 'nsql-med[bundle]'   # nsql-med, plus fire and jsonschema for MONAI's bundle commands",
        "python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\",
        "    --n 8 --seed 0 --output_dir synthetic/",
        "```",
        "",
        "Overrides: `--n` (images, default 8), `--seed` (latent draws, default 0), `--output_dir` (default",
        "`<bundle_root>/synthetic`), `--device` (auto, cpu or cuda), `--bundle_root` (this folder; default `.`).",
        "Every file is byte-identical to what `nsql-med synthesize --model models --n N --seed S --out DIR`",
        "writes on the same device (preview.png too when both output folders have the same name: it is in its title).",
        "",
        "Check the metadata against MONAI's schema (MONAI downloads it from the URL in `schema`):",
        "",
        "```bash",
        "python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath meta_schema.json",
        "```",
        "",
        card.rstrip(),
        "",
        evaluation.rstrip(),
        "",
    ])
