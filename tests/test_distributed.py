"""Data-parallel fits under torchrun: 2 gloo processes on the CPU against a single process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from support import (
    Paused, assignment_problem, cli, relative_files, run_cli, synthesize_on_cpu, torch_threads_kept, write_subjects,
)
from neurosql_med.config import AssignmentConfig, load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.assignment import AssignmentProblem, assign
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.io.model import load_model
from neurosql_med.training.distributed import TIMEOUT_ENV, Alone, Group, shard_by_subject
from neurosql_med.training.train import fit

EPOCHS = 4
TIMEOUT_S = 20  # NSQL_MED_DIST_TIMEOUT for these runs
# A 2-process run follows the single-process one batch for batch; only the order of
# floating-point sums differs (gradients are summed over ranks), so the losses agree to
# 1e-3 relative and the assignment is the same for at least 95 % of the images.
LOSS_RTOL = 1e-3
SAME_CODES = 0.95


def torchrun(cwd: Path, *args: str, timeout: float = 240):
    """``torchrun --nproc-per-node 2 -m neurosql_med.cli fit SCANS --config tiny ...`` on the CPU, in ``cwd``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "neurosql_med.cli",
               "fit", *args, "--config", "tiny", "--device", "cpu", "--epochs", str(EPOCHS)]
    env = os.environ | {TIMEOUT_ENV: str(TIMEOUT_S)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("scans"), 6)


@pytest.fixture(scope="module")
def two_process_fit(tmp_path_factory, scans) -> Path:
    """A 2-process fit by `nsql-med fit --nproc-per-node 2` (run here; it starts torchrun), in an empty folder so
    that any stray file would show."""
    work = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.setenv(TIMEOUT_ENV, str(TIMEOUT_S))
        assert run_cli("fit", scans, "--config", "tiny", "--device", "cpu", "--epochs", EPOCHS, "--out", "model",
                       "--nproc-per-node", "2") == 0
    return work


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, scans) -> dict:
    """A 2-process fit of EPOCHS whose rank 1 is killed (SIGKILL) while rank 0 is held after its first checkpoint.

    Rank 0 is then let go into its next exchange with the dead rank. Returns the torchrun
    process, its exit code and output, the seconds from the kill to its end, and the model folder.
    """
    work = tmp_path_factory.mktemp("killed")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    child = Paused(work, "neurosql_med.training.train.save_snapshot", 1,
                   "fit", scans, "--config", "tiny", "--device", "cpu", "--epochs", EPOCHS, "--out", work / "model",
                   launcher=launcher, env=os.environ | {TIMEOUT_ENV: str(TIMEOUT_S)}, start_new_session=True)
    try:
        victim = _rank_pid(child.proc.pid, 1)
        assert victim is not None, "rank 1 is not among torchrun's children"
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        code, out, err = child.release(timeout=TIMEOUT_S + 30)
        seconds = time.monotonic() - killed
    finally:
        if child.proc.poll() is None:
            os.killpg(child.proc.pid, signal.SIGKILL)
    return {"proc": child.proc, "code": code, "output": out + err, "seconds": seconds, "model": work / "model"}


def test_shards_split_by_subject_in_contiguous_balanced_runs():
    subjects = ["a"] * 3 + ["b"] * 2 + ["c"] * 3 + ["d"] * 2
    shards = [shard_by_subject(Group(r, 2, torch.device("cpu")), subjects) for r in range(2)]
    assert shards[0].owned.tolist() == [0, 1, 2, 3, 4] and shards[1].owned.tolist() == [5, 6, 7, 8, 9]
    assert shards[1].local_of[5:].tolist() == [0, 1, 2, 3, 4] and (shards[1].local_of[:5] == -1).all()
    with pytest.raises(Exception, match="only 1 subject"):
        shard_by_subject(Group(0, 2, torch.device("cpu")), ["a"] * 4)


def test_alone_answers_as_a_shard_of_one_process_would():
    """The trainer asks the same questions alone as under torchrun: a single-process run gives a one-rank shard's answers."""
    subjects = ["a"] * 3 + ["b"] * 2 + ["c"] * 4
    shard, alone = shard_by_subject(Group(0, 1, torch.device("cpu")), subjects), Alone(len(subjects))
    assert alone.owner.tolist() == shard.owner.tolist() and alone.rank == shard.rank and alone.world == shard.world
    assert torch.equal(torch.arange(9)[alone.rows], shard.rows)
    batch = torch.tensor([7, 2, 5])
    assert all(torch.equal(a, b) for a, b in zip(alone.local(batch), shard.local(batch)))
    per_sample = torch.tensor([0.5, 1.5, 4.0])
    torch.testing.assert_close(alone.batch_loss(per_sample, 3), shard.batch_loss(per_sample, 3))
    assert alone.any(True) and not alone.any(False)
    generator = torch.nn.Linear(2, 2)
    alone.wrap(generator, torch.device("cpu"))
    assert alone.model is generator


BLOCK_SIZES = (64, 7)  # one dense problem of 30 images, then blocks of 7 or 8


def _sharded_assign(rank: int, world: int, rendezvous: str, out: str) -> None:
    """One rank of the sharded assignment of ``assignment_problem(30, labels=True)``; rank 0 saves what it returns.

    A forked copy of the test process: one intra-op thread, so no OpenMP pool the fork did not copy is waited on.
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        generator, lattice, images, labels = assignment_problem(30, labels=True)
        shard = shard_by_subject(Group(rank, world, torch.device("cpu")), [f"s{i // 4}" for i in range(30)])
        mine = torch.as_tensor(shard.owned)
        previous = np.random.default_rng(1).permutation(30)
        found = {}
        for block_size in BLOCK_SIZES:
            problem = AssignmentProblem(generator, lattice, images[mine], ReconstructionLoss(2, window=5),
                                        AssignmentConfig(cost="mse", block_size=block_size), 8, "cpu", labels[mine], shard)
            result = assign(problem, previous, 2)
            found[block_size] = {"perm": result.perm.tolist(), "total": result.total_cost, "blocked": result.blocked}
        if rank == 0:
            Path(out).write_text(json.dumps(found))
    finally:
        dist.destroy_process_group()


@pytest.mark.processes
def test_the_sharded_assignment_equals_the_single_process_one(tmp_path):
    """Each rank costs its own images against the lattice shares passed round; rank 0 solves: same result as alone.

    The ranks are forked, not spawned: a spawned one would import this module, and torch with it, anew (seconds each).
    """
    out = tmp_path / "rank0.json"
    mp.start_processes(_sharded_assign, args=(2, str(tmp_path / "rendezvous"), str(out)), nprocs=2, start_method="fork")
    sharded = json.loads(out.read_text())
    generator, lattice, images, labels = assignment_problem(30, labels=True)
    for block_size in BLOCK_SIZES:
        problem = AssignmentProblem(generator, lattice, images, ReconstructionLoss(2, window=5),
                                    AssignmentConfig(cost="mse", block_size=block_size), 8, "cpu", labels)
        alone = assign(problem, previous=np.random.default_rng(1).permutation(30), seed=2)
        found = sharded[str(block_size)]
        assert found["blocked"] == alone.blocked == (block_size < 30)
        assert found["perm"] == alone.perm.tolist()
        assert found["total"] == pytest.approx(alone.total_cost, rel=1e-5)


@pytest.mark.slow
@pytest.mark.processes
def test_two_processes_match_one_and_only_rank_0_writes(tmp_path, scans, two_process_fit):
    work = two_process_fit
    assert sorted(p.name for p in work.iterdir()) == ["model"]  # nothing written beside the model folder
    cfg = override(load_config("tiny"), train__epochs=EPOCHS, train__device="cpu")
    alone = tmp_path / "alone"
    with torch_threads_kept():
        torch.set_num_threads(1)  # as each of the two ranks on this machine's CPUs
        fit(load_cohort(scans, cfg.data), cfg, alone, show_progress=False)
    assert relative_files(work / "model") == relative_files(alone)
    rows = [[json.loads(line) for line in (m / "history.jsonl").read_text().splitlines()] for m in (work / "model", alone)]
    assert len(rows[0]) == len(rows[1]) == EPOCHS
    for ddp, single in zip(*rows):
        assert ddp["loss"] == pytest.approx(single["loss"], rel=LOSS_RTOL)
    codes = [np.load(m / "assignment.npy") for m in (work / "model", alone)]
    assert np.mean(codes[0] == codes[1]) >= SAME_CODES
    load_model(work / "model", "cpu")
    assert synthesize_on_cpu(work / "model", tmp_path / "synth", n=2).written == 2


@pytest.mark.slow
@pytest.mark.processes
def test_resume_under_two_processes_reaches_the_uninterrupted_model(tmp_path, scans, two_process_fit, killed_run):
    """The killed run's checkpoint, resumed on two processes, ends in the uninterrupted 2-process model's bytes."""
    shutil.copytree(killed_run["model"], tmp_path / "model")
    resumed = torchrun(tmp_path, str(scans), "--out", "model", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    history = (tmp_path / "model" / "history.jsonl").read_text().splitlines()
    assert len(history) == EPOCHS
    for name in ("model.pt", "assignment.npy"):
        assert (tmp_path / "model" / name).read_bytes() == (two_process_fit / "model" / name).read_bytes(), name


def _rank_pid(parent: int, rank: int) -> int | None:
    """The worker of ``rank`` among the children of the torchrun process ``parent``."""
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.slow
@pytest.mark.processes
def test_a_killed_rank_ends_the_run_with_an_error_within_the_timeout(killed_run):
    assert killed_run["seconds"] < TIMEOUT_S + 30
    assert killed_run["code"] != 0
    output = killed_run["output"]
    assert "error" in output.lower() or "failed" in output.lower(), output[-2000:]
    assert _rank_pid(killed_run["proc"].pid, 0) is None
    model = killed_run["model"]  # a checkpoint to resume from, and no finished model
    assert (model / "model.pt").is_file() and not (model / "hashes.json").exists()
    assert len((model / "history.jsonl").read_text().splitlines()) < EPOCHS


def test_a_conditional_fit_on_several_processes_is_refused_before_any_starts(capsys, tmp_path):
    code, _, err = cli(capsys, "fit", Path(__file__).resolve().parents[1] / "sample_data", "--config", "tiny", "--condition", "CDR", "--nproc-per-node", "2",
                       "--out", tmp_path / "model")
    assert code == 2
    assert err.strip().splitlines() == ["error: a conditional or slice-aware fit (--condition, model.slice_levels) runs in one process: "
                                            "drop --nproc-per-node for it"]
    assert not (tmp_path / "model").exists()
