"""The `nsql-med` command end to end, in-process: arguments in, exit codes and lines out."""
import json
from pathlib import Path

import numpy as np
import pytest

from support import TINY_EPOCHS, cli, write_nifti, write_subjects

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.startswith("nsql-med ")


def test_inspect_sample_cohort_json(capsys):
    code, out, _ = cli(capsys, "inspect", SAMPLE, "--json")
    report = json.loads(out)
    assert code == 0 and report["layout"] == "bids" and len(report["scans"]) >= 24
    scan = report["scans"][0]
    assert {"id", "subject", "session", "path", "format", "shape", "spacing"} <= set(scan)
    assert scan["shape"] == [88, 104, 88] and scan["spacing"] == [2.0, 2.0, 2.0]
    assert all(s["path"].startswith("formats/") for s in report["skipped"])


def test_inspect_every_format(capsys):
    code, out, _ = cli(capsys, "inspect", SAMPLE / "formats", "--json")
    formats = sorted(s["format"] for s in json.loads(out)["scans"])
    assert code == 0 and formats == ["analyze", "dicom"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (("inspect", "/no/such/folder"), "/no/such/folder"),
        (("fit", "/no/such/folder"), "/no/such/folder"),
        (("fit", SAMPLE, "--config", "/no/such.yaml"), "no/such.yaml"),
        (("fit", SAMPLE, "--latent-dim", "0"), "latent_dim"),
        (("synthesize", "--n", "5", "--out", "/tmp/x", "--model", "/no/model"), "/no/model"),
        (("fit", SAMPLE, "--epochs", "many"), "--epochs"),
        (("benchmark", SAMPLE, "--methods", "neurosql,flow"), "flow"),
        (("benchmark", SAMPLE, "--budget-minutes", "0"), "budget"),
        (("benchmark", SAMPLE, "--seeds", "0,a"), "--seeds"),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys, args, needle):
    code, _, err = cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


@pytest.mark.parametrize("shape, needle", [((8, 8, 8, 2), "is not a 3D image"), (None, "unreadable NIfTI")])
def test_preview_of_a_4d_or_damaged_image_is_one_error_line(capsys, tmp_path, shape, needle):
    write_nifti(tmp_path / "fine.nii.gz", np.ones((8, 8, 8), np.int16))
    if shape is None:
        (tmp_path / "odd.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    else:
        write_nifti(tmp_path / "odd.nii.gz", np.ones(shape, np.int16))
    code, _, err = cli(capsys, "preview", tmp_path)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "odd.nii.gz" in lines[0] and needle in lines[0]


def test_tau_nan_is_refused_before_any_work(capsys, tmp_path):
    code, _, err = cli(capsys, "synthesize", "--n", "2", "--out", tmp_path / "s", "--model", "/no/model",
                       "--audit", tmp_path, "--tau", "nan")
    assert code == 2 and "--tau must be positive and finite, got nan" in err and not (tmp_path / "s").exists()
    code, _, err = cli(capsys, "evaluate", "--real", tmp_path, "--synth", tmp_path, "--tau", "nan")
    assert code == 2 and "--tau must be positive and finite, got nan" in err


def test_fit_refuses_a_used_output_folder_before_loading_scans(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "fit", "/no/such/folder", "--out", tmp_path)
    assert code == 2 and "notes.txt, which nsql-med did not write" in err and "choose another --out" in err and "/no/such/folder" not in err


def test_empty_folder_is_an_error(capsys, tmp_path):
    code, _, err = cli(capsys, "inspect", tmp_path)
    assert code == 2 and err.startswith("error: ")


@pytest.mark.slow
def test_fit_synthesize_reproduce_evaluate(capsys, tmp_path):
    scans = write_subjects(tmp_path / "scans", 5)
    model, synth, report = tmp_path / "model", tmp_path / "synth", tmp_path / "report"
    code, out, err = cli(capsys, "fit", scans, "--config", "tiny", "--out", model, "--epochs", "3")
    assert code == 0, err
    assert (model / "hashes.json").is_file() and "model written" in out
    code, _, err = cli(capsys, "fit", scans, "--config", "tiny", "--out", model)
    assert code == 2 and "--resume" in err
    code, out, err = cli(capsys, "synthesize", "--n", "4", "--out", synth, "--model", model, "--batch-size", "2")
    assert code == 0, err
    assert (synth / "preview.png").is_file() and "preview" in out
    image = synth / "sub-synth0002/anat/sub-synth0002_desc-nsql_T1w.nii.gz"
    code, out, _ = cli(capsys, "reproduce", image, "--model", model)
    assert code == 0 and "identical" in out
    code, out, err = cli(capsys, "evaluate", "--real", scans, "--synth", synth, "--model", model, "--out", report, "--json")
    assert code == 0, err
    assert json.loads(out) == json.loads((report / "report.json").read_text())
    assert json.loads(out)["c2st"]["reconstruction"] is not None  # --real is the model's own training set
    code, out, err = cli(capsys, "evaluate", "--real", scans, "--synth", synth, "--model", model, "--no-c2st", "--json")
    assert code == 0 and "c2st" not in json.loads(out), err
    code, _, err = cli(capsys, "synthesize", "--n", "0", "--out", tmp_path / "s2", "--model", model)
    assert code == 2 and "--n" in err and not (tmp_path / "s2").exists()


@pytest.mark.slow
def test_resume_continues_the_saved_config(capsys, tmp_path, tiny_models):
    scans, model = tiny_models.scans, tiny_models.copy("tiny3d", "plain", tmp_path / "m")  # TINY_EPOCHS of tiny3d
    code, out, err = cli(capsys, "fit", scans, "--out", model, "--resume", "--epochs", TINY_EPOCHS + 1)
    assert code == 0, err
    said = " ".join(out.split())  # rich wraps the summary at the terminal's width, wherever the long path ends
    assert f"{TINY_EPOCHS + 1} epochs" in said and "3d sample" in said
    code, _, err = cli(capsys, "fit", scans, "--out", model, "--resume", "--latent-dim", "8")
    assert code == 2 and "cannot change latent_dim" in err
    code, _, err = cli(capsys, "fit", scans, "--out", model, "--resume", "--seed", "1")
    assert code == 2 and "cannot change seed" in err
    code, out, err = cli(capsys, "fit", scans, "--out", model, "--resume", "--seed", "0", "--latent-dim", "4",
                         "--epochs", TINY_EPOCHS + 2)
    assert code == 0 and f"{TINY_EPOCHS + 2} epochs" in " ".join(out.split()), err  # the values it started with are no change
