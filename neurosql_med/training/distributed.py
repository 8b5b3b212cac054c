"""Data-parallel fits under ``torchrun``: one process per device, the generator in DDP.

Scans are sharded by subject, each rank trains on its own samples, and gradients are
averaged by ``DistributedDataParallel``. An epoch walks the same seeded global order of
samples as a single process, batch by batch; every rank takes the members of each global
batch it holds and scales its loss so that the averaged gradient is the batch mean, so
a run on R processes follows a single-process run up to floating-point rounding.

The assignment stays global and exact: each rank decodes its share of a block's lattice
points and passes them round (a broadcast per rank), costs its own images against them,
and rank 0 gathers the rows, solves the LAP and broadcasts the permutation. Memory per
rank is its shard of images, one share of decoded points and its cost rows; rank 0 holds
one block's costs. Only rank 0 writes. Collectives time out (``NSQL_MED_DIST_TIMEOUT``
seconds), so a crashed rank ends the others with an error instead of a hang; Ctrl-C is
noted and acted on by all ranks together at the end of the epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from neurosql_med.config import Config
from neurosql_med.engine.assignment import AssignmentProblem
from neurosql_med.errors import UserError
from neurosql_med.runtime import resolve_device

TIMEOUT_ENV = "NSQL_MED_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 900  # longer than rank 0 alone ever works while the others wait (a large block's LAP)


def world_size() -> int:
    """Processes in this run: torchrun's WORLD_SIZE, 1 when started alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def writes_folder() -> bool:
    """Whether this process writes the model folder: alone, or as torchrun's rank 0 (its RANK), before the group forms."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Group:
    """This process's place in a torchrun job."""

    rank: int
    world: int
    device: torch.device


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[Group | None]:
    """Join the torchrun job (nccl on CUDA, gloo on the CPU) for the fit's duration; None when alone.

    A failed collective (a peer crashed, or waited past the timeout) becomes one error line.
    """
    if world_size() <= 1:
        yield None
        return
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=seconds))
    group = Group(dist.get_rank(), dist.get_world_size(), device)
    interrupt = signal.signal(signal.SIGINT, _note_interrupt)
    try:
        yield group
        dist.barrier()  # rank 0 finishes the folder while the others wait: a process leaving early aborts at exit
    except RuntimeError as exc:
        if not _from_collective(exc.__traceback__):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"rank {group.rank} of {group.world}: lost the other processes of this fit "
                        f"(one crashed or stopped answering within {seconds:g} s): {reason}") from exc
    finally:
        signal.signal(signal.SIGINT, interrupt)
        _INTERRUPTED.clear()
        gc.collect()  # the DDP wrapper must go before its process group, or the process aborts at exit
        dist.destroy_process_group()


_INTERRUPTED: list[bool] = []  # set by Ctrl-C under torchrun, read at the end of each epoch


def _note_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C under torchrun: a rank stopped mid-collective would leave the others waiting, so only note it."""
    _INTERRUPTED.append(True)


def _from_collective(trace: TracebackType | None) -> bool:
    """Whether an error was raised inside torch.distributed (a collective that failed or timed out)."""
    while trace is not None:
        if "torch/distributed" in trace.tb_frame.f_code.co_filename.replace(os.sep, "/"):
            return True
        trace = trace.tb_next
    return False


def barrier(group: Group | None) -> None:
    """Wait for every rank (nothing when alone)."""
    if group is not None:
        dist.barrier()


@dataclass
class Shard:
    """The samples this rank trains on and how it talks to the others."""

    rank: int
    world: int
    owner: np.ndarray  # owner[i]: the rank that holds global sample i
    local_of: np.ndarray  # local_of[i]: sample i's row in this rank's images (-1 on other ranks)
    model: torch.nn.Module | None = None  # the generator wrapped in DDP, for the training forward

    @property
    def owned(self) -> np.ndarray:
        """This rank's global sample indices, ascending."""
        return np.flatnonzero(self.owner == self.rank)

    @property
    def rows(self) -> Tensor:
        """This process's rows of the cohort (its ``owned`` samples)."""
        return torch.as_tensor(self.owned)

    def wrap(self, generator: torch.nn.Module, device: torch.device) -> None:
        """Wrap the generator in DDP; its parameters stay the generator's, which is what is saved."""
        self.model = DistributedDataParallel(generator, device_ids=[device] if device.type == "cuda" else None)

    def local(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """The members of a global batch held here: their global indices and their rows in this rank's images."""
        mine = batch[torch.as_tensor(self.owner[batch.numpy()] == self.rank)]
        return mine, torch.as_tensor(self.local_of[mine.numpy()])

    def batch_loss(self, per_sample: Tensor, batch_size: int) -> Tensor:
        """This rank's share of the global batch mean, times R because DDP averages the ranks' gradients."""
        return per_sample.sum() * (self.world / batch_size)

    def reduce(self, totals: object) -> None:
        """Sum an epoch's totals (a dataclass of floats and tensors) over the ranks, in place."""
        for item in dataclasses.fields(totals):
            value = getattr(totals, item.name)
            if isinstance(value, (float, Tensor)):
                summed = torch.as_tensor(value, dtype=torch.float64).clone()
                dist.all_reduce(summed)
                setattr(totals, item.name, float(summed) if isinstance(value, float) else summed.to(value.dtype))

    def check_interrupt(self) -> None:
        """Raise KeyboardInterrupt on every rank, together, once Ctrl-C reached any of them."""
        if self.any(bool(_INTERRUPTED)):
            raise KeyboardInterrupt

    def any(self, flag: bool) -> bool:
        """Whether any rank says so: a stop decided together (the time budget), so none waits alone."""
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, array: np.ndarray) -> np.ndarray:
        """Rank 0's copy of ``array`` (same shape and dtype on every rank)."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        dist.broadcast(tensor, src=0)
        return tensor.numpy()

    def block_costs(
        self, problem: AssignmentProblem, kind: str, rows: np.ndarray, columns: np.ndarray, timings: dict[str, float],
    ) -> np.ndarray | None:
        """The block's rows x columns costs, on rank 0 (None elsewhere): the sharded strategy of ``assign``.

        Each rank decodes one share of the columns and broadcasts it; every rank costs its
        own rows against each share as it passes, so no rank holds all decoded points.
        """
        x, y = problem.rows(self.local_of[rows[self.owner[rows] == self.rank]])
        shape = (1 + getattr(problem.generator, "num_labels", 0), *problem.images.shape[2:])
        costs = torch.empty(len(x), len(columns), device=problem.device)
        for k, share in enumerate(np.array_split(np.arange(len(columns)), self.world)):
            if len(share) == 0:
                continue
            outputs = (problem.decode(columns[share], timings) if k == self.rank
                       else torch.empty(len(share), *shape, device=problem.device))
            start = time.perf_counter()
            dist.broadcast(outputs, src=k)  # waiting for a share counts as decoding it
            timings["forward"] += time.perf_counter() - start
            costs[:, share[0]:share[-1] + 1] = problem.costs(outputs, x, y, kind, timings)
        return self._gather_rows(rows, costs)

    def _gather_rows(self, rows: np.ndarray, mine: Tensor) -> np.ndarray | None:
        """Rank 0 assembles the block from every rank's cost rows (padded to one size for ``gather``)."""
        holders = self.owner[rows]
        longest = max(int((holders == r).sum()) for r in range(self.world))
        padded = torch.zeros(longest, mine.shape[1], dtype=torch.float32, device=mine.device)
        padded[: len(mine)] = mine
        received = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(padded, received, dst=0)
        if received is None:
            return None
        block = np.empty((len(rows), mine.shape[1]), dtype=np.float32)
        for r, part in enumerate(received):
            where = np.flatnonzero(holders == r)
            block[where] = part[: len(where)].cpu().numpy()
        return block


@dataclass
class Alone:
    """A fit in one process: a ``Shard``'s questions with their one-process answers, so the trainer asks them either way."""

    n: int  # samples, all held here
    model: torch.nn.Module | None = None  # the generator itself, for the training forward
    rank: int = 0
    world: int = 1

    @property
    def owner(self) -> np.ndarray:
        return np.zeros(self.n, dtype=np.int64)

    @property
    def rows(self) -> slice:
        """This process's rows of the cohort: all of them."""
        return slice(None)

    def wrap(self, generator: torch.nn.Module, device: torch.device) -> None:
        self.model = generator

    def local(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        return batch, batch

    def batch_loss(self, per_sample: Tensor, batch_size: int) -> Tensor:
        return per_sample.mean()

    def reduce(self, totals: object) -> None:
        """Nothing to sum: the totals are already the whole epoch's."""

    def check_interrupt(self) -> None:
        """Nothing to do: Ctrl-C raises KeyboardInterrupt in the one process directly."""

    def any(self, flag: bool) -> bool:
        return flag

    def broadcast(self, array: np.ndarray) -> np.ndarray:
        return array

    def block_costs(
        self, problem: AssignmentProblem, kind: str, rows: np.ndarray, columns: np.ndarray, timings: dict[str, float],
    ) -> np.ndarray:
        """The assignment's one-process strategy: ``problem.block_costs``."""
        return problem.block_costs(kind, rows, columns, timings)


Placement = Shard | Alone  # where this process's samples are: all here, or its shard under torchrun


def shard_by_subject(group: Group, subjects: Sequence[str]) -> Shard:
    """Split the samples by subject into ``group.world`` contiguous runs of about equal size.

    Subjects keep their order of first appearance; a subject's samples all go to one rank,
    so no scan is shared between ranks.
    """
    names = list(dict.fromkeys(subjects))
    sizes = np.array([0] * len(names))
    index = {name: i for i, name in enumerate(names)}
    for subject in subjects:
        sizes[index[subject]] += 1
    before = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank_of_subject = np.minimum(before * group.world // len(subjects), group.world - 1)
    owner = np.array([rank_of_subject[index[s]] for s in subjects], dtype=np.int64)
    empty = sorted(set(range(group.world)) - set(owner.tolist()))
    if empty:
        raise UserError(f"{group.world} processes but only {len(names)} subject(s): rank(s) {empty} would have no scans")
    local_of = np.full(len(subjects), -1, dtype=np.int64)
    local_of[owner == group.rank] = np.arange(int((owner == group.rank).sum()))
    return Shard(group.rank, group.world, owner, local_of)


def launch(processes: int, args: Sequence[str], cfg: Config) -> int:
    """``nsql-med fit ARGS`` on ``processes`` local processes through torchrun; its exit status.

    ``cfg`` is the fit's checked config: what every process would refuse is refused here, once.
    """
    if cfg.condition is not None or cfg.model.slice_levels:
        raise UserError("a conditional or slice-aware fit (--condition, model.slice_levels) runs in one process: "
                        "drop --nproc-per-node for it")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "neurosql_med.cli", *args]
    return subprocess.run(command, check=False).returncode
