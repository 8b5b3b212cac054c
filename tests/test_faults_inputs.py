"""Hostile and accidental inputs: each is refused with one `error:` line and exit status 2.

Every case runs the real CLI entry point. Besides the exit code and the line, each checks
that no traceback reached the terminal and, where the command would write, that nothing
was left behind.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from support import brain_volume, cli, write_dicom_series, write_nifti, write_subjects
from neurosql_med.cli.main import main
from neurosql_med.io.files import umask, write_text
from neurosql_med.runtime import available_cpus, cgroup_cpu_quota


def refused(capfd, *args, culprit: str, out: Path | None = None) -> str:
    """Run the CLI; assert the refusal contract and return the error line."""
    code, stdout, stderr = cli(capfd, *args)
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stdout, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert culprit in lines[0], lines[0]
    assert "Traceback" not in stdout + stderr
    if out is not None:
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    return lines[0]


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("scans"), 3)


# -- config values, from the command line and from files ------------------------------


@pytest.mark.parametrize(
    "option, value, key",
    [
        ("--latent-dim", "1000000000", "model.latent_dim"),
        ("--seed", "-5", "train.seed"),
        ("--seed", "100000000000000000000", "train.seed"),
        ("--max-minutes", "nan", "train.max_minutes"),
        ("--max-minutes", "inf", "train.max_minutes"),
    ],
)
def test_fit_options_out_of_range(capfd, scans, tmp_path, option, value, key):
    refused(capfd, "fit", scans, "--config", "tiny", "--out", tmp_path / "m", option, value, culprit=key, out=tmp_path / "m")


@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  lr: .nan\n", "train.lr"),
        ("train:\n  weight_decay: .inf\n", "train.weight_decay"),
        ("loss:\n  ssim_weight: -.inf\n", "loss.ssim_weight"),
        ("assignment:\n  threshold: .nan\n", "assignment.threshold"),
        ("data:\n  intensity_percentiles: [.nan, 99]\n", "data.intensity_percentiles[0]"),
        ("data:\n  slice_range: [0.2, .nan]\n", "data.slice_range[1]"),
        ("data:\n  spacing: .nan\n", "data.spacing"),
        ("data:\n  spacing: [.nan, 2, 2]\n", "data.spacing[0]"),
        ("data:\n  spacing: [1.0e+300, 2, 2]\n", "data.spacing"),
        ("model:\n  channels: [1.0e+9, 16]\n", "model.channels[0]"),
        ("model:\n  channels: [1e9, 16]\n", "model.channels[0]"),  # YAML 1.1 reads 1e9 as a string
        ("model:\n  channels: [1000000000, 16]\n", "model.channels"),
        ("model:\n  channels: [16, 16, 16, 16, 16, 16, 16, 16, 16]\n", "model.channels"),
        ("data:\n  shape: [100000, 100000, 100000]\n", "data.shape"),
        ("data:\n  mode: 3d\n  shape: [1024, 1024, 1024]\n", "data.shape"),
        ("data:\n  mode: 3d\n  shape: [256, 256, 256]\nmodel:\n  channels: [4096, 16]\n", "model.channels"),
        ("train:\n  seed: 4294967296\n", "train.seed"),
    ],
)
def test_config_values_out_of_range(capfd, scans, tmp_path, text, key):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    refused(capfd, "fit", scans, "--config", config, "--out", tmp_path / "m", culprit=key, out=tmp_path / "m")


def test_config_file_that_is_not_utf8(capfd, scans, tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("# Größe\ntrain:\n  epochs: 2\n".encode("latin-1"))
    line = refused(capfd, "fit", scans, "--config", config, "--out", tmp_path / "m", culprit=str(config), out=tmp_path / "m")
    assert "UTF-8" in line


def test_spacing_that_would_resample_a_scan_past_memory(capfd, scans, tmp_path):
    config = tmp_path / "fine.yaml"
    config.write_text("data:\n  spacing: [0.01, 0.01, 0.01]\n")
    refused(capfd, "fit", scans, "--config", config, "--out", tmp_path / "m", culprit="data.spacing", out=tmp_path / "m")


# -- scans that must be skipped with their reason, and stop --strict -------------------


def _huge_of_zeros(path: Path) -> None:
    """A 2 MB .nii.gz of 600^3 int16 zeros (432 MB): repeated gzip members of one compressed block."""
    header = nib.Nifti1Header()
    header.set_data_shape((600, 600, 600))
    header.set_data_dtype(np.int16)
    block = 2**24
    whole, rest = divmod(2 * 600**3, block)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(header.binaryblock + b"\0" * 4, compresslevel=1))
        fh.write(gzip.compress(b"\0" * block, compresslevel=1) * whole)
        fh.write(gzip.compress(b"\0" * rest, compresslevel=1))


def _zero_pixdim(path: Path) -> None:
    img = nib.Nifti1Image(brain_volume(1), np.eye(4))
    img.header["pixdim"][1] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def _float64_overflow(path: Path) -> None:
    values = brain_volume(2).astype(np.float64)
    values[1, 1, 1] = 1e300
    write_nifti(path, values)


def _damaged_dicom(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x13\x37 not a DICOM header " * 40)


def _truncated_dicom_header(path: Path) -> None:
    series = write_dicom_series(path.parent / "series", brain_volume(3))
    path.write_bytes(series[0].read_bytes()[:300])  # file meta survives, the image header does not
    for f in series:
        f.unlink()
    (path.parent / "series").rmdir()


BAD_SCANS = {
    "complex.nii.gz": (lambda p: write_nifti(p, brain_volume(0).astype(np.complex64) * (1 + 1j)), "complex-valued voxels"),
    "zero_pixdim.nii.gz": (_zero_pixdim, "zero or invalid voxel size"),
    "overflow.nii.gz": (_float64_overflow, "exceed the float32 range"),
    "huge.nii.gz": (_huge_of_zeros, "too large: declares 600x600x600 voxels"),
    "damaged.dcm": (_damaged_dicom, "unreadable DICOM file"),
    "cut.dcm": (_truncated_dicom_header, "unreadable DICOM file"),
}


@pytest.fixture(scope="module")
def bad_scans(tmp_path_factory) -> Path:
    """One folder per bad scan, each beside a good scan so a non-strict run succeeds."""
    root = tmp_path_factory.mktemp("bad")
    for name, (make, _) in BAD_SCANS.items():
        write_nifti(root / name / "good.nii.gz", brain_volume(9))
        make(root / name / name)
    return root


@pytest.mark.parametrize("name", BAD_SCANS)
def test_bad_scan_is_skipped_with_its_reason_quietly(capfd, bad_scans, name):
    code, out, err = cli(capfd, "inspect", bad_scans / name, "--json")
    assert code == 0 and err == "", err  # no nibabel or numpy warning on stderr
    reasons = {s["path"]: s["reason"] for s in json.loads(out)["skipped"]}
    assert BAD_SCANS[name][1] in reasons[name], reasons


@pytest.mark.parametrize("name", BAD_SCANS)
def test_bad_scan_stops_strict(capfd, bad_scans, name):
    line = refused(capfd, "inspect", bad_scans / name, "--strict", culprit=str(bad_scans / name / name))
    assert BAD_SCANS[name][1] in line


def test_strict_fit_on_a_bad_scan_writes_nothing(capfd, bad_scans, tmp_path):
    refused(capfd, "fit", bad_scans / "zero_pixdim.nii.gz", "--config", "tiny", "--strict", "--out", tmp_path / "m",
            culprit="zero_pixdim.nii.gz", out=tmp_path / "m")


def test_huge_declared_scan_is_refused_before_its_data_is_read(capfd, bad_scans):
    tracemalloc.start()
    try:
        refused(capfd, "inspect", bad_scans / "huge.nii.gz", "--strict", culprit="huge.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # reading the 432 MB of voxels would show here


def test_fit_names_each_unusable_scan_it_skips_and_checks_the_disk_before_writing(capfd, bad_scans, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**4, 10**4))
    for name in ("zero_pixdim.nii.gz", "damaged.dcm"):
        folder, out = shutil.copytree(bad_scans / name, tmp_path / name), tmp_path / f"{name}.model"
        write_nifti(folder / "good2.nii.gz", brain_volume(8))  # two good scans: enough samples for the tiny config
        code, stdout, stderr = cli(capfd, "fit", folder, "--config", "tiny", "--out", out)
        assert code == 2 and stderr.startswith("error: ") and "GB" in stderr and not out.exists(), stderr
        _, inspected, _ = cli(capfd, "inspect", folder, "--json")
        (reason,) = [s["reason"] for s in json.loads(inspected)["skipped"]]
        assert f"skipped {folder / name}: {reason}" in stdout.splitlines(), stdout


def test_fit_on_a_missing_device_writes_nothing(capfd, scans, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "m"
    refused(capfd, "fit", scans, "--config", "tiny", "--device", "cuda", "--out", out, culprit="--device cuda", out=out)


# -- files that would cost unbounded memory or recursion ----------------------------------

ALIAS_BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9 if p else ['lol'] * 9)}]\n"
                     for p, c in zip(["", *"abcdefg"], "abcdefgh")) + "train: {lr: *h}\n"


def test_yaml_alias_bomb_is_refused_before_it_expands(capfd, scans, tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(ALIAS_BOMB)
    tracemalloc.start()
    try:
        line = refused(capfd, "fit", scans, "--config", config, "--out", tmp_path / "m", culprit=str(config), out=tmp_path / "m")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "alias" in line and peak < 50 * 2**20


@pytest.mark.parametrize("text, culprit", [
    ("# padding\n" * 200_000, "larger than 1 MiB"),
    ("train:\n  lr: " + "[" * 100 + "]" * 100 + "\n", "deeper than 32"),
    ("train:\n  lr: [" + "1, " * 10_000 + "]\n", "more than 10,000 values"),
    ("train:\n  seed: " + "1" * 5000 + "\n", "not valid YAML"),
    ("train:\n  lr: [" + ", ".join(map(str, range(5_000))) + "]\n", "train.lr"),
    ("model:\n  lattice: " + "x" * 100_000 + "\n", "model.lattice"),
])
def test_config_read_within_limits_and_its_values_shown_short(capfd, scans, tmp_path, text, culprit):
    config = tmp_path / "big.yaml"
    config.write_text(text)
    line = refused(capfd, "fit", scans, "--config", config, "--out", tmp_path / "m", culprit=culprit, out=tmp_path / "m")
    assert len(line) < 300, line  # a type and a preview, never the value's whole repr


def test_deep_participants_sidecar_is_one_line(capfd, tmp_path):
    root = write_subjects(tmp_path / "bids", 2)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-00\t70\nsub-01\t80\n")
    (root / "participants.json").write_text("[" * 200_000 + "]" * 200_000)
    refused(capfd, "inspect", root, culprit="participants.json: nested deeper than 32 levels")


# -- outputs that cannot be written ------------------------------------------------------


@pytest.mark.parametrize("name", ["preview.jpg", "preview", "folder.png"])
def test_preview_must_be_a_png_file_and_is_checked_first(capfd, tmp_path, name):
    (tmp_path / "folder.png").mkdir()
    # the scan folder does not exist: the --preview check must come before any work
    refused(capfd, "inspect", tmp_path / "no-scans", "--preview", tmp_path / name, culprit="--preview")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png"]


@pytest.mark.parametrize(
    "target, why",
    [("/proc/nsql-med-test/preview.png", "cannot write /proc/nsql-med-test"),
     ("/sys/nsql-med-test/preview.png", "cannot write /sys/nsql-med-test: permission denied"),
     ("/proc/preview.png", "cannot write /proc/preview.png")],
)
def test_unwritable_output_is_one_line(capfd, scans, target, why):
    refused(capfd, "inspect", scans, "--config", "tiny", "--preview", target, culprit=why)


def test_fit_out_under_proc_is_one_line(capfd, scans):
    refused(capfd, "fit", scans, "--config", "tiny", "--epochs", "1", "--out", "/proc/nsql-x", culprit="cannot write /proc/nsql-x")


def test_outputs_honour_the_umask(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    assert umask() == mask
    write_text(tmp_path / "sub" / "a.txt", "x")
    assert (tmp_path / "sub" / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


# -- CPU threads -------------------------------------------------------------------------


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    "files, quota",
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
    ],
)
def test_cgroup_quota(tmp_path, files, quota):
    assert cgroup_cpu_quota(_cgroup(tmp_path, files)) == quota


def test_available_cpus_is_capped_by_the_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(_cgroup(tmp_path / "none", {})) == affinity
    assert available_cpus(_cgroup(tmp_path / "one", {"cpu.max": "150000 100000"})) == 1
    assert available_cpus(_cgroup(tmp_path / "tiny", {"cpu.max": "10000 100000"})) == 1  # never 0
    assert available_cpus(_cgroup(tmp_path / "many", {"cpu.max": "6400000 100000"})) == affinity


def test_threads_option_sets_torchs_thread_count(capfd, monkeypatch):
    """`cli` restores torch's thread count after a command, so the first one runs `main` itself."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # not the count asked for below
        monkeypatch.setattr(sys, "argv", ["nsql-med", "fit", "/no/such/folder", "--threads", "1"])
        with pytest.raises(SystemExit) as stopped:
            main()
        assert stopped.value.code == 2 and "/no/such/folder" in capfd.readouterr().err
        assert torch.get_num_threads() == 1
        refused(capfd, "evaluate", "--real", "/no/r", "--synth", "/no/s", "--threads", "-1", culprit="--threads")
        refused(capfd, "synthesize", "--n", "1", "--out", "/tmp/x", "--threads", "100000", culprit="--threads")
    finally:
        torch.set_num_threads(before)
