"""The MONAI Bundle export and the model card: the bundle runs through MONAI's own runner and
writes exactly what `nsql-med synthesize` writes; neither the metadata nor the card names a path or a scan."""
import datetime
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import fire
import monai.bundle.scripts
import pytest
from monai.bundle import verify_metadata

from support import LABEL_NAMES, TINY_EPOCHS, TINY_SUBJECTS, cli, torch_threads_kept
from neurosql_med.config import load_config
from neurosql_med.evaluation.evaluate import evaluate
from neurosql_med.evaluation.options import EvaluateOptions
from neurosql_med.export.bundle import export_bundle
from neurosql_med.io.model import ARTIFACTS, verify
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.synthesize import synthesize

REQUIRED = ("schema", "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
            "task", "description", "authors", "copyright", "network_data_format")


@pytest.fixture
def scans(tiny_models) -> Path:
    return tiny_models.scans


@pytest.fixture
def model_dir(tiny_models) -> Path:
    return tiny_models.get("tiny")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_models) -> Path:
    model_dir = tiny_models.get("tiny")
    return export_bundle(model_dir, tmp_path_factory.mktemp("export") / "bundle", authors="tester", copyright="(c) tester")


def hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_anonymous(text: str, scans: Path) -> None:
    assert scans.name not in text and str(scans.parent) not in text
    assert re.search(r"sub-\d", text) is None  # the training subjects' ids (sub-00 ...)


@pytest.mark.slow
def test_fit_writes_a_hashed_card_without_paths_or_ids(model_dir, scans):
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert "MODEL_CARD.md" in ARTIFACTS and "MODEL_CARD.md" in verify(model_dir)
    assert f"{TINY_SUBJECTS} scan(s)" in card and f"{TINY_EPOCHS} of {TINY_EPOCHS} epoch(s)" in card and load_config(model_dir / "config.yaml").digest() in card
    for section in ("## What it was trained on", "## How", "## Reconstruction quality", "## Latest evaluation",
                    "## Intended use", "## Limits"):
        assert section in card
    last = json.loads((model_dir / "history.jsonl").read_text().splitlines()[-1])
    assert f"{last['ssim']:.3f}" in card and "not for diagnosis" in card.lower()
    assert_anonymous(card, scans)


@pytest.mark.slow
def test_evaluate_refreshes_the_card_and_the_folder_still_verifies(model_dir, scans, tmp_path):
    model = shutil.copytree(model_dir, tmp_path / "model")
    card = (model / "MODEL_CARD.md").read_bytes()
    synthesize(SynthesizeOptions(model=model, out=tmp_path / "synth", n=6, device="cpu"), show_progress=False)
    report = evaluate(EvaluateOptions(real=scans, synth=tmp_path / "synth", model=model, c2st="off"))
    evaluation = (model / "EVALUATION.md").read_text()
    assert datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d") in evaluation
    assert verify(model)["model.pt"] in evaluation
    assert f"{report['fidelity']['mae']:.4f}" in evaluation and f"{report['diversity']['ratio']:.3f}" in evaluation
    assert f"{report['memorization']['n_flagged']} (" in evaluation
    assert_anonymous(evaluation, scans)
    assert (model / "MODEL_CARD.md").read_bytes() == card and verify(model) == verify(model_dir)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:parsing config_file")  # MONAI's caution about configs from others; this one is ours
def test_bundle_runs_through_monai_and_writes_what_synthesize_writes(bundle, model_dir, tmp_path):
    """The documented command line, overrides included: `python -m monai.bundle run ARGS` is fire over MONAI's
    bundle scripts, called here with the same ARGS."""
    command = ["run", "--config_file", bundle / "configs/inference.json", "--bundle_root", bundle, "--n", "9",
               "--seed", "5", "--device", "cpu", "--output_dir", tmp_path / "a/synth"]
    with torch_threads_kept():
        fire.Fire({"run": monai.bundle.scripts.run}, command=list(map(str, command)), name="monai.bundle")
    synthesize(SynthesizeOptions(model=model_dir, out=tmp_path / "b/synth", n=9, seed=5, device="cpu"), show_progress=False)
    from_bundle, from_cli = hashes(tmp_path / "a/synth"), hashes(tmp_path / "b/synth")
    assert len([f for f in from_cli if f.endswith((".nii.gz", ".json"))]) >= 18
    assert from_bundle == from_cli


@pytest.mark.slow
def test_bundle_layout_and_its_model_folder_verifies(bundle, model_dir):
    assert verify(bundle / "models") == verify(model_dir)
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md", "LICENSE"):
        assert (bundle / name).is_file(), name
    assert "Apache License" in (bundle / "LICENSE").read_text()
    readme = (bundle / "docs/README.md").read_text()
    assert (model_dir / "MODEL_CARD.md").read_text().strip() in readme and "monai.bundle run" in readme


@pytest.mark.slow
def test_metadata_has_monais_required_keys_and_names_no_path(bundle, model_dir, scans):
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert all(key in meta for key in REQUIRED)
    assert meta["model_sha256"] == verify(model_dir)["model.pt"]
    assert meta["training_data_fingerprint"] == json.loads((model_dir / "data_fingerprint.json").read_text())
    assert meta["network_data_format"]["inputs"]["latent"]["num_channels"] == 4
    for name in ("configs/metadata.json", "configs/inference.json", "docs/README.md"):
        text = (bundle / name).read_text()
        assert_anonymous(text, scans)
        assert str(model_dir) not in text and str(bundle) not in text


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("NSQL_MONAI_SCHEMA"), reason="MONAI's metadata schema is downloaded at run "
                    "time and nothing may be downloaded here: set NSQL_MONAI_SCHEMA to a local copy to run this check")
def test_metadata_passes_monais_schema(bundle, tmp_path):
    schema = os.environ["NSQL_MONAI_SCHEMA"]
    meta_file = bundle / "configs/metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=schema)  # the file exists: MONAI downloads nothing
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps({k: v for k, v in json.loads(meta_file.read_text()).items() if k != "authors"}))
    with pytest.raises(ValueError, match="authors"):  # the check can fail
        verify_metadata(meta_file=str(broken), filepath=schema)


@pytest.mark.slow
def test_export_refuses_a_used_folder_and_an_unfinished_model(capsys, model_dir, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "export-bundle", model_dir, "--out", used)
    assert code == 2 and "not empty" in err and (used / "notes.txt").read_text() == "mine"

    unfinished = shutil.copytree(model_dir, tmp_path / "unfinished")
    (unfinished / "hashes.json").unlink()
    code, _, err = cli(capsys, "export-bundle", unfinished, "--out", tmp_path / "b")
    assert code == 2 and "incomplete model folder" in err and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_labelled_model_exports_with_its_label_names(tiny_models, tmp_path):
    model = tiny_models.get("tiny", "labelled")
    out = export_bundle(model, tmp_path / "bundle", authors="test", copyright="test")
    assert verify(out / "models") == verify(model)
    assert json.loads((out / "models" / "labels.json").read_text())["names"] == list(LABEL_NAMES)
