"""Output safety under attack and accident: what --force may delete, concurrent runs, kills and absurd requests.

Every refusal is one `error:` line naming the culprit, exit 2, no traceback, and the
user's files exactly as they were. The subprocess tests run the real `nsql-med` command,
paused at a chosen point (after its first checkpoint, after its k-th sample) until the
test lets it go, so a kill (SIGKILL, SIGINT) or a second writer always meets a run in
progress; they check that what is left on disk resumes to the very bytes of an
uninterrupted run.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
from pathlib import Path

import pytest
import torch

from support import Paused, cli, run_cli, write_subjects
from neurosql_med.io.outputs import LOCK, output_lock

pytestmark = pytest.mark.usefixtures("one_cpu")  # commands run here and in forked children (support.Forked)

EPOCHS = "3"  # the reference fit's: checkpoints after epochs 2 and 3, then the final one
N_RACE = 12


def refused(result, *needles: str) -> str:
    code, _, err = result
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "use --force" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return err


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "model.pt").write_bytes(b"looks like ours, is not alone")
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("faults") / "scans", 5)


@pytest.fixture(scope="module")
def model(scans) -> Path:
    """The uninterrupted reference fit through the real entry point, which every interrupted fit must reach."""
    out = scans.parent / "model"
    assert run_cli("fit", scans, "--config", "tiny", "--epochs", EPOCHS, "--out", out) == 0
    return out


# -- --force deletes only what nsql-med wrote ---------------------------------------------

def test_fit_force_keeps_a_user_folder(capsys, scans, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = listing(mine)
    refused(cli(capsys, "fit", scans, "--config", "tiny", "--out", mine, "--force"), "notes.txt", "choose another --out")
    refused(cli(capsys, "fit", scans, "--config", "tiny", "--out", mine), "notes.txt")
    assert listing(mine) == before


def test_fit_force_never_deletes_its_own_scans_or_their_parent(capsys, scans):
    before = listing(scans)
    for out in (scans, scans.parent):
        refused(cli(capsys, "fit", scans, "--config", "tiny", "--out", out, "--force"), out)
    assert listing(scans) == before


def test_force_refuses_root_and_home(capsys, scans, tmp_path, monkeypatch):
    home = user_folder(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    refused(cli(capsys, "fit", scans, "--config", "tiny", "--out", "/", "--force"), "root folder")
    for out in (home, tmp_path):
        refused(cli(capsys, "fit", scans, "--config", "tiny", "--out", out, "--force"), "home folder")
        refused(cli(capsys, "synthesize", "--n", "2", "--out", out, "--force", "--model", tmp_path / "none"), "home folder")
    assert (home / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("option, value, needle", [("--n", str(10**12), "1,000,000"), ("--seed", "-5", "got -5"),
                                                   ("--seed", str(10**20), "got 100000000000000000000")])
def test_absurd_n_or_seed_is_refused_before_anything(capsys, tmp_path, option, value, needle):
    out = tmp_path / "out"
    n = [] if option == "--n" else ["--n", "2"]
    refused(cli(capsys, "synthesize", *n, option, value, "--out", out, "--model", tmp_path / "none"), option, needle)
    assert not out.exists()


def test_fit_force_refuses_a_synthetic_cohort(capsys, scans, tmp_path):
    cohort = tmp_path / "cohort"
    (cohort / "sub-synth1/anat").mkdir(parents=True)
    (cohort / ".nsql-med.json").write_text(json.dumps({"kind": "cohort", "nsql-med": "0.1.0"}))
    (cohort / "dataset_description.json").write_text(json.dumps({"GeneratedBy": [{"Name": "nsql-med"}]}))
    before = listing(cohort)
    for force in ([], ["--force"]):
        refused(cli(capsys, "fit", scans, "--config", "tiny", "--out", cohort, *force),
                "is an nsql-med synthetic cohort, not a model folder")
    assert listing(cohort) == before


def test_a_fit_into_a_folder_another_run_holds_is_refused_first(capsys, scans, tmp_path):
    out = tmp_path / "busy"
    with output_lock(out):
        for extra in ([], ["--force"], ["--resume"]):
            refused(cli(capsys, "fit", scans, "--config", "tiny", "--out", out, *extra), "in use by another nsql-med run")
        assert [p.name for p in out.iterdir()] == [LOCK]


# -- evaluate --out ------------------------------------------------------------------------

def test_evaluate_out_that_cannot_be_a_folder_is_refused_first(capsys, tmp_path):
    existing = tmp_path / "report.txt"
    existing.write_text("keep")
    missing = tmp_path / "no-such-scans"
    refused(cli(capsys, "evaluate", "--real", missing, "--synth", missing, "--out", existing), "report.txt", "not a folder")
    refused(cli(capsys, "evaluate", "--real", missing, "--synth", missing, "--out", existing / "sub"), "report.txt/sub")
    assert existing.read_text() == "keep" and not missing.exists()


def test_evaluate_out_may_not_be_an_input(capsys, scans):
    refused(cli(capsys, "evaluate", "--real", scans, "--synth", scans, "--out", scans), "is the input")
    assert not (scans / "report.json").exists()


def test_a_held_lock_refuses_a_second_run_and_a_dead_ones_is_taken_over(capsys, tmp_path):
    out, missing = tmp_path / "report", tmp_path / "no-such-scans"
    with output_lock(out):
        assert (out / LOCK).read_text().strip() == str(os.getpid())
        refused(cli(capsys, "evaluate", "--real", missing, "--synth", missing, "--out", out),
                "in use by another nsql-med run", f"pid {os.getpid()}")
        assert listing(out) == {LOCK: f"{os.getpid()}\n".encode()}
    assert not out.exists()  # the lock made the folder; released, it leaves nothing behind
    out.mkdir()
    (out / LOCK).write_text("999999\n")  # a killed run's lock file: no process holds its flock
    err = refused(cli(capsys, "evaluate", "--real", missing, "--synth", missing, "--out", out), "no-such-scans")
    assert "in use" not in err


# -- reproduce of hostile provenance ---------------------------------------------------------

def test_reproduce_of_random_bytes_is_one_error_line(capsys, tmp_path):
    junk = os.urandom(4096)
    for name in ("x.nii.gz", "y.json", "z.bin"):
        (tmp_path / name).write_bytes(junk)
        refused(cli(capsys, "reproduce", tmp_path / name, "--model", tmp_path / "none"), name.split(".")[0])


def test_reproduce_of_a_missing_file_says_so(capsys, tmp_path):
    for name in ("no/such/file.nii.gz", "sub-synth0001_desc-nsql_T1w.json", "dicom/x.dcm"):
        refused(cli(capsys, "reproduce", tmp_path / name, "--model", tmp_path / "none"), tmp_path / name, "does not exist")


def test_reproduce_of_a_deeply_nested_sidecar_is_one_line(capsys, tmp_path):
    side = tmp_path / "sub-synth0001_desc-nsql_T1w.json"
    side.write_text("[" * 200_000 + "]" * 200_000)
    refused(cli(capsys, "reproduce", side, "--model", tmp_path / "none"), side.name, "nested deeper")


@pytest.mark.parametrize("edit, field", [
    ({"latent_index": 10**30}, "latent_index"), ({"index": -1}, "index"), ({"seed": "0"}, "seed"),
    ({"seed": True}, "seed"), ({"versions": "oops"}, "versions"), ({"max_typicality": 2}, "max_typicality"),
    ({"device": "tpu"}, "device"),
])
def test_reproduce_validates_the_record_before_decoding(capsys, tmp_path, edit, field):
    record = {"NeuroSQL": {"index": 1, "seed": 0, "max_typicality": 1.0, "latent_index": 1, "device": "cpu",
                           "versions": {"nsql-med": "0.1.0"}, **edit}}
    side = tmp_path / "sub-synth0001_desc-nsql_T1w.json"
    side.write_text(json.dumps(record))
    side.with_name("sub-synth0001_desc-nsql_T1w.nii.gz").write_bytes(b"")
    refused(cli(capsys, "reproduce", side, "--model", tmp_path / "none"), side.name, field)


# -- with a model -----------------------------------------------------------------------------

def synthesize(capsys, model: Path, out: Path, n: int = 3, *extra):
    return cli(capsys, "synthesize", "--n", str(n), "--out", out, "--model", model, "--device", "cpu", *extra)


@pytest.mark.slow
def test_synthesize_force_replaces_only_a_cohort(capsys, model, scans, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = listing(mine)
    refused(synthesize(capsys, model, mine, 2, "--force"), "model.pt, which nsql-med did not write")
    assert listing(mine) == before
    model_files = listing(model)
    refused(synthesize(capsys, model, model, 2, "--force"), "is the input")
    refused(synthesize(capsys, model, model.parent, 2, "--force"), "holds the input")
    refused(synthesize(capsys, model, tmp_path / "c", 2, "--audit", tmp_path / "c"), "is the input")
    assert listing(model) == model_files and listing(scans)
    cohort = tmp_path / "cohort"
    assert synthesize(capsys, model, cohort, 2)[0] == 0
    assert json.loads((cohort / ".nsql-med.json").read_text())["kind"] == "cohort" and not (cohort / LOCK).exists()
    refused(synthesize(capsys, model, cohort, 2), "holds an nsql-med cohort")
    assert synthesize(capsys, model, cohort, 3, "--force", "--seed", "1")[0] == 0
    assert len(list(cohort.rglob("*.nii.gz"))) == 3
    (cohort / "sub-synth0001" / "notes.txt").write_text("mine")
    refused(synthesize(capsys, model, cohort, 3, "--force"), "sub-synth0001/notes.txt")
    assert (cohort / "sub-synth0001" / "notes.txt").is_file() and len(list(cohort.rglob("*.nii.gz"))) == 3


@pytest.mark.slow
def test_synthesize_refuses_what_the_disk_cannot_hold(capsys, model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**5, 10**5))
    refused(synthesize(capsys, model, out, 100), "GB", str(out))
    assert not out.exists()


@pytest.mark.slow
def test_a_running_synthesize_holds_its_folder(capsys, model, tmp_path):
    out = tmp_path / "busy"
    with output_lock(out):
        refused(synthesize(capsys, model, out, 2, "--force"), "in use by another nsql-med run", f"pid {os.getpid()}")
        refused(synthesize(capsys, model, out, 2), "in use")
        assert [p.name for p in out.iterdir()] == [LOCK]


def png_height(path: Path) -> int:
    return struct.unpack(">II", path.read_bytes()[16:24])[1]


@pytest.mark.slow
def test_cohort_preview_shows_no_real_person(capsys, model, tmp_path):
    cohort = tmp_path / "cohort"
    assert synthesize(capsys, model, cohort, 8)[0] == 0
    shipped = (cohort / "preview.png").read_bytes()
    refused(cli(capsys, "preview", cohort, "--model", model), "--model")
    refused(cli(capsys, "preview", cohort, "--with-reconstructions", model), "--out")
    refused(cli(capsys, "preview", cohort, "--with-reconstructions", model, "--out", cohort / "r.png"), "r.png", "inside")
    assert cli(capsys, "preview", cohort)[0] == 0 and (cohort / "preview.png").read_bytes() == shipped
    outside = tmp_path / "recon.png"
    assert cli(capsys, "preview", cohort, "--with-reconstructions", model, "--out", outside)[0] == 0
    assert png_height(outside) > png_height(cohort / "preview.png")
    assert not (cohort / "r.png").exists()


@pytest.mark.slow
def test_edited_sidecar_reproduces_as_different(capsys, model, tmp_path):
    cohort = tmp_path / "cohort"
    assert synthesize(capsys, model, cohort, 2)[0] == 0
    side = cohort / "sub-synth0002/anat/sub-synth0002_desc-nsql_T1w.json"
    record = json.loads(side.read_text())
    record["NeuroSQL"]["seed"] = 1
    side.write_text(json.dumps(record))
    code, out, err = cli(capsys, "reproduce", side, "--model", model)
    assert code == 1 and "DIFFERENT" in out and "Traceback" not in err


@pytest.mark.slow
def test_fit_resume_removes_a_killed_runs_temporaries(capsys, model, scans, tmp_path):
    folder = shutil.copytree(model, tmp_path / "model")
    stray = folder / ".model.pt.x1y2.tmp.pt"
    stray.write_bytes(b"half a checkpoint")
    code, _, err = cli(capsys, "fit", scans, "--config", "tiny", "--epochs", EPOCHS, "--out", folder, "--resume")
    assert code == 0, err
    assert not stray.exists() and (folder / "model.pt").read_bytes() == (model / "model.pt").read_bytes()


# -- real processes: kill -9, SIGINT, two writers -------------------------------------------------

def fit_paused_after_first_checkpoint(tmp_path: Path, scans: Path, out: Path) -> Paused:
    return Paused(tmp_path, "neurosql_med.training.train.save_snapshot", 1,
                  "fit", scans, "--config", "tiny", "--epochs", EPOCHS, "--out", out)


def synthesize_paused(tmp_path: Path, model: Path, out: Path, after: int, seed: int, *extra) -> Paused:
    return Paused(tmp_path, "neurosql_med.synthesis.synthesize.write_formats", after,
                  "synthesize", "--n", N_RACE, "--out", out, "--model", model, "--device", "cpu", "--seed", seed, *extra)


def assert_same_model(a: Path, b: Path) -> None:
    for name in ("model.pt", "assignment.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.processes
def test_fit_killed_with_sigkill_resumes_to_the_same_bytes(capsys, model, scans, tmp_path):
    out = tmp_path / "model"
    child = fit_paused_after_first_checkpoint(tmp_path, scans, out)
    child.proc.kill()
    assert child.proc.wait() == -signal.SIGKILL and not (out / "hashes.json").exists()
    assert len((out / "history.jsonl").read_text().splitlines()) < int(EPOCHS)
    code, _, err = cli(capsys, "fit", scans, "--config", "tiny", "--epochs", EPOCHS, "--out", out, "--resume")
    assert code == 0, err
    assert_same_model(out, model)
    assert not list(out.glob(".*.tmp*"))


@pytest.mark.slow
@pytest.mark.processes
def test_fit_interrupted_with_sigint_exits_130_and_resumes(capsys, model, scans, tmp_path):
    out = tmp_path / "model"
    child = fit_paused_after_first_checkpoint(tmp_path, scans, out)
    child.proc.send_signal(signal.SIGINT)
    _, err = child.proc.communicate(timeout=60)
    assert child.proc.returncode == 130 and "Traceback" not in err, err
    assert not (out / "hashes.json").exists()
    code, _, err = cli(capsys, "fit", scans, "--config", "tiny", "--epochs", EPOCHS, "--out", out, "--resume")
    assert code == 0, err
    assert_same_model(out, model)


@pytest.mark.slow
@pytest.mark.processes
def test_synthesize_killed_with_sigkill_resumes_to_the_same_bytes(capsys, model, tmp_path):
    out, reference = tmp_path / "killed", tmp_path / "whole"
    child = synthesize_paused(tmp_path, model, out, 5, 1)
    child.proc.kill()
    assert child.proc.wait() == -signal.SIGKILL and not (out / "manifest.tsv").exists()
    assert len(list(out.glob("sub-*/anat/*.nii.gz"))) == 5
    code, out_text, err = synthesize(capsys, model, out, N_RACE, "--seed", "1", "--resume")
    assert code == 0 and "5 kept" in out_text, (out_text, err)
    assert synthesize(capsys, model, reference, N_RACE, "--seed", "1")[0] == 0
    images = {p.relative_to(out) for p in out.rglob("*.nii.gz")}
    assert len(images) == N_RACE and images == {p.relative_to(reference) for p in reference.rglob("*.nii.gz")}
    assert all((out / p).read_bytes() == (reference / p).read_bytes() for p in images)
    assert (out / "manifest.tsv").read_text() == (reference / "manifest.tsv").read_text()


# -- a fit that fails after it started writing: the disk fills up at each stage -------------------

# (file, which write of it) at which the disk is full: the marker, the first checkpoint (nothing to resume yet),
# between two checkpoints, and the finished model's pictures
STAGES = [(".nsql-med.json", 1), ("model.pt", 1), ("history.jsonl", 2), ("recon.png", 1)]


def disk_full_at(path: Path, nth: int):
    """os.replace, failing with ENOSPC the ``nth`` time a finished file is moved into ``path``."""
    real, seen = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == path:
            seen[0] += 1
            if seen[0] == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)
    return replace


@pytest.mark.slow
@pytest.mark.parametrize("name, nth", STAGES, ids=[f"{n}#{k}" for n, k in STAGES])
def test_a_fit_failing_at_any_stage_is_finished_by_the_same_command_or_resume(
        capsys, monkeypatch, scans, model, tmp_path, name, nth):
    out = tmp_path / "model"
    command = ["fit", scans, "--config", "tiny", "--epochs", EPOCHS, "--out", out]
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", disk_full_at(out / name, nth))
        refused(cli(capsys, *command), "no space left on device", out / name)
    left = listing(out) if out.exists() else {}
    assert not [p for p in left if ".tmp" in p], left
    resume = ["--resume"] if (out / "model.pt").is_file() else []
    if resume:
        refused(cli(capsys, *command), "already holds a model", "--resume")
    with monkeypatch.context() as patch:  # and the device asked for is missing: refused before anything changes
        patch.setattr(torch.cuda, "is_available", lambda: False)
        refused(cli(capsys, *command, *resume, "--device", "cuda"), "--device cuda")
    assert (listing(out) if out.exists() else {}) == left
    code, _, err = cli(capsys, *command, *resume)
    assert code == 0, err
    assert_same_model(out, model) and (out / "hashes.json").is_file()


@pytest.mark.slow
@pytest.mark.processes
def test_two_fits_into_one_folder_one_wins_whole(capsys, scans, model, tmp_path):
    out = tmp_path / "model"
    command = ["fit", scans, "--config", "tiny", "--epochs", EPOCHS, "--out", out]
    first = Paused(tmp_path, "neurosql_med.training.train.save_snapshot", 1, *command)  # holds --out, mid-fit
    code, _, err = cli(capsys, *command)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    code, _, err = first.release()
    assert code == 0, err
    assert_same_model(out, model) and (out / "hashes.json").is_file()


@pytest.mark.slow
@pytest.mark.processes
def test_two_writers_into_one_folder_one_wins_whole(capsys, model, tmp_path):
    out = tmp_path / "cohort"
    first = synthesize_paused(tmp_path, model, out, 1, 1, "--force")  # holds the folder, one sample written
    during = listing(out)
    code, _, err = synthesize(capsys, model, out, N_RACE, "--seed", "2", "--force")  # this process: the second writer
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "in use by another nsql-med run" in err, err
    assert listing(out) == during  # the refused writer touched nothing
    code, _, err = first.release()
    assert code == 0, err
    seeds = {json.loads(p.read_text())["NeuroSQL"]["seed"] for p in out.glob("sub-*/anat/*.json")}
    manifest = (out / "manifest.tsv").read_text().splitlines()[1:]
    assert seeds == {1} and len(manifest) == N_RACE
    assert all(line.split("\t")[2] == "1" for line in manifest)
