"""pytest's hooks and the shared fixtures; the helpers they use live in support.py.

Under pytest-xdist the controller process loads this file but runs no test, so it imports
nothing heavy at module level: torch, MONAI and nsql-med load only in the workers (each
fixture imports its helpers from support.py when it runs). That saves the controller the
seconds those imports take before any worker starts. Test modules import helpers from
support.py.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from support import TinyModels


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, give each worker its own share of the CPUs.

    nsql-med sizes torch's threads to the CPUs its process may use (its affinity mask), as
    every in-process `fit` does; two workers each running threads for every CPU would queue
    on the same cores, and OpenMP's waiting threads make small steps many times slower.
    Child processes (torchrun, the CLI) inherit the share.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= count > 1:
        share = set(cpus[int(worker.removeprefix("gw")) % count::count])
        os.sched_setaffinity(0, share)
        import torch
        torch.set_num_threads(len(share))


# The modules that take longest (measured with --durations), started first under pytest-xdist
# so that no worker is left with one of them while the other has finished. The Makefile
# keeps this order (--no-loadscope-reorder); every other module keeps its random place.
SLOWEST_FIRST = ("test_distributed.py", "test_c2st.py", "test_faults_outputs.py", "test_utility.py",
                 "test_realistic_cohort.py", "test_benchmark.py", "test_labels_model.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move SLOWEST_FIRST's modules to the front, slowest first; a stable sort keeps pytest-randomly's order otherwise."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)
    items.sort(key=rank)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """Name the random order (pytest-randomly) at the end, where -q still shows it: the seed repeats it."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(f"random order: --randomly-seed={seed} repeats it")


@pytest.fixture
def tiny_bids(tmp_path: Path) -> Path:
    """OASIS-3-like BIDS: 4 subjects (3 with sessions), a FLAIR, sidecars and a stray `formats/` copy."""
    from support import brain_volume, write_analyze, write_nifti
    root = tmp_path / "bids"
    for i, (sub, ses) in enumerate([("sub-OAS30001", "ses-d0129"), ("sub-OAS30001", "ses-d0757"),
                                    ("sub-OAS30002", "ses-d0100"), ("sub-OAS30003", None)]):
        anat = root / sub / (ses or "") / "anat"
        name = f"{sub}_{ses}" if ses else sub
        write_nifti(anat / f"{name}_T1w.nii.gz", brain_volume(i))
        (anat / f"{name}_T1w.json").write_text("{}")
    write_nifti(root / "sub-OAS30002/ses-d0100/anat/sub-OAS30002_ses-d0100_FLAIR.nii.gz", brain_volume(9))
    write_analyze(root / "formats/sub-OAS30001_T1w.hdr", brain_volume(0))
    (root / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.8.0"}')
    (root / "participants.tsv").write_text("participant_id\nsub-OAS30001\n")
    return root


@pytest.fixture
def tiny_oasis1(tmp_path: Path) -> Path:
    """Two OASIS-1 sessions with every sibling image the real disc holds."""
    from support import brain_volume, tissue_labels, write_analyze
    root = tmp_path / "disc1"
    for i, session in enumerate(["OAS1_0001_MR1", "OAS1_0002_MR1"]):
        base = root / session
        volume = brain_volume(i)
        for run in (1, 2):
            write_analyze(base / f"RAW/{session}_mpr-{run}_anon.hdr", volume)
        write_analyze(base / f"PROCESSED/MPRAGE/SUBJ_111/{session}_mpr_n4_anon_sbj_111.hdr", volume)
        t88 = base / "PROCESSED/MPRAGE/T88_111"
        write_analyze(t88 / f"{session}_mpr_n4_anon_111_t88_gfc.hdr", volume)
        write_analyze(t88 / f"{session}_mpr_n4_anon_111_t88_masked_gfc.hdr", volume)
        write_analyze(base / f"FSL_SEG/{session}_mpr_n4_anon_111_t88_masked_gfc_fseg.hdr", tissue_labels(volume) * 3)
        (base / f"{session}.txt").write_text("AGE: 74\n")
        (t88 / f"{session}_mpr_n4_anon_111_t88_gfc_tra_90.gif").write_bytes(b"GIF89a")
    return root


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The run's tiny models; under pytest-xdist every worker shares one folder of them."""
    from support import TinyModels
    base = tmp_path_factory.getbasetemp()
    return TinyModels((base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "tiny-models")


@pytest.fixture(scope="session")
def both_formats(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Three samples of a model in NIfTI and DICOM, written on first use and only read by the tests that share them."""
    from support import synthesize_on_cpu
    made: dict[Path, Path] = {}

    def cohort(model_dir: Path) -> Path:
        if model_dir not in made:
            made[model_dir] = tmp_path_factory.mktemp("cohort") / "synth"
            synthesize_on_cpu(model_dir, made[model_dir], n=3, format="both")
        return made[model_dir]
    return cohort


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors gain nothing from intra-op threads, and on a CPU shared with other jobs
    OpenMP's waiting workers made small steps 10-20x slower (the DDPM's, the C2ST's)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_cpu(one_thread):
    """This process on one CPU, for a module whose commands run both here and in forked children
    (support.Forked): every command sizes torch to its CPUs, so each runs on one thread in either
    place and computes the same bytes. Under pytest-xdist on 2 cores a worker already has one."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    yield
    os.sched_setaffinity(0, cpus)
