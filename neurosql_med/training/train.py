"""The NeuroSQL trainer: exact assignment steps alternating with generator regression.

Read top to bottom: set-up, the initial OT assignment of PCA scores to the lattice,
then epochs of (maybe) re-assignment followed by one pass of AdamW over the assigned
pairs. Assignment runs every epoch while many codes still move and backs off once
they settle. A checkpoint is written at the end of every assignment round and on
Ctrl-C, so ``resume`` reaches exactly what an uninterrupted run would.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from neurosql_med.viz import plots
from neurosql_med.engine.assignment import assign, initial_assignment
from neurosql_med.config import Config, load_config, override, save_config
from neurosql_med.data.cohort import Cohort
from neurosql_med.errors import UserError
from neurosql_med.io.files import write_text
from neurosql_med.engine.lattice import quantile_lattice
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.io.model import (
    CHECKPOINT,
    HASHES,
    build_generator,
    load_checkpoint,
    save_array,
    save_checkpoint,
    write_hashes,
)
from neurosql_med.io.outputs import check_model_output, prepare_model_output
from neurosql_med.runtime import resolve_device, seed_everything

EpochHook = Callable[[dict], None]


@dataclass
class FitResult:
    folder: Path
    epochs: int
    history: list[dict]
    interrupted: bool
    stopped_by_budget: bool
    model_sha256: str | None


RESUMABLE = ("train__epochs", "train__max_minutes", "train__device")


def fit_config(source: str | Path | None, out: Path, resume: bool, force: bool = False, **overrides: object) -> Config:
    """The config a fit runs with: a resumed fit continues its own saved config.

    Checks ``out`` first, so a refused output folder is reported before scans are loaded.

    Command-line overrides apply on top (e.g. more ``train__epochs`` to train longer).
    """
    check_model_output(Path(out), resume=resume, force=force)
    saved = Path(out) / "config.yaml"
    if resume and saved.is_file():
        fixed = sorted(k.split("__")[1] for k, v in overrides.items() if v is not None and k not in RESUMABLE)
        if fixed:
            raise UserError(f"--resume continues the saved config; it cannot change {', '.join(fixed)}")
        return override(load_config(saved), **overrides)
    return override(load_config(source), **overrides)


def lr_lambda(total: int, warmup: int = 5) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 5 % over the configured epochs."""
    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / warmup
        progress = (epoch - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]fit[/] epoch {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  ssim {task.fields[ssim]:.3f}  changed {task.fields[changed]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        transient=False,
    )


def fit(
    cohort: Cohort,
    cfg: Config,
    out: Path,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
    on_epoch_end: EpochHook | None = None,
) -> FitResult:
    out = Path(out)
    prepare_model_output(out, resume=resume, force=force)
    if resume:  # the saved config decides what is being continued; only budget and device may change
        saved = load_config(out / "config.yaml")
        saved.train.epochs, saved.train.max_minutes, saved.train.device = cfg.train.epochs, cfg.train.max_minutes, cfg.train.device
        cfg = saved
    n, t = len(cohort), cfg.train
    device = resolve_device(t.device)
    seed_everything(t.seed)
    amp = t.amp and device.type == "cuda"

    # -- set-up: fixed lattice, generator, loss, optimiser --------------------------------
    lattice = quantile_lattice(n, cfg.model.latent_dim, cfg.model.lattice, seed=t.seed)
    codes = torch.as_tensor(lattice, dtype=torch.float32, device=device)
    images = cohort.images.to(device)
    generator = build_generator(cfg, cohort.geometry).to(device)
    generator.init_template(images)
    loss_fn = ReconstructionLoss(images.dim() - 2, cfg.loss.ssim_weight, cfg.loss.ssim_window).to(device)
    optimizer = torch.optim.AdamW(generator.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.epochs))

    out.mkdir(parents=True, exist_ok=True)
    if resume:
        missing = [f for f in ("data_fingerprint.json", "history.jsonl") if not (out / f).is_file()]
        if missing:
            raise UserError(f"--resume: {out} is damaged ({', '.join(missing)} missing); start again with --force")
        if json.loads((out / "data_fingerprint.json").read_text()) != cohort.fingerprint():
            raise UserError(f"--resume: these scans differ from the ones {out} was trained on")
        state = load_checkpoint(out / CHECKPOINT, device)
        generator.load_state_dict(state["generator"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        trainer = state["trainer"]
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()][: trainer["epoch"]]
        (out / HASHES).unlink(missing_ok=True)  # the folder is in progress again
    else:
        save_config(cfg, out / "config.yaml")
        cohort.geometry.save(out / "geometry.json")
        write_text(out / "data_fingerprint.json", json.dumps(cohort.fingerprint(), indent=2))
        save_array(out / "lattice.npy", lattice)
        perm = initial_assignment(images, lattice, cfg.model.lattice, cfg.assignment.block_size, t.seed)
        # one regression epoch on the PCA codes first: an untrained generator decodes every
        # code to the same blur, which makes the first cost matrix degenerate and the LAP slow
        trainer = {"epoch": 0, "perm": torch.as_tensor(perm), "interval": 1, "next_assign": 1}
        history = []

    def snapshot() -> dict:
        """Everything a resumed run needs, as of the end of the last completed epoch.

        Wall-clock timings stay out of the checkpoint (they go to history.jsonl) so the
        same seed on the same device gives a byte-identical model.pt.
        """
        return {
            "generator": {k: v.detach().clone() for k, v in generator.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": copy.deepcopy(scheduler.state_dict()),
            "trainer": {**trainer, "perm": trainer["perm"].clone()},
            "history": list(history),
        }

    def checkpoint(state: dict) -> None:
        save_checkpoint(out / CHECKPOINT, {k: v for k, v in state.items() if k != "history"})
        save_array(out / "assignment.npy", state["trainer"]["perm"].numpy())
        write_text(out / "history.jsonl", "".join(json.dumps(r) + "\n" for r in state["history"]))

    # -- epochs: assignment step (when due), then one pass over the assigned pairs ---------
    started = time.monotonic()
    budget = None if t.max_minutes is None else t.max_minutes * 60
    interrupted = stopped_by_budget = False
    last_good = snapshot()
    progress = _progress()
    task = progress.add_task("fit", total=t.epochs, completed=trainer["epoch"], loss=float("nan"), ssim=float("nan"), changed="-")
    with progress if show_progress else contextlib.nullcontext():
        try:
            while trainer["epoch"] < t.epochs:
                epoch, tick = trainer["epoch"], time.monotonic()
                row: dict = {"epoch": epoch + 1}
                if epoch >= trainer["next_assign"]:
                    result = assign(
                        generator, codes, images, loss_fn, cfg.assignment, t.batch_size, device,
                        previous=trainer["perm"].numpy(), seed=t.seed + epoch,
                    )
                    trainer["perm"] = torch.as_tensor(result.perm)
                    changing = result.changed_fraction > cfg.assignment.threshold
                    trainer["interval"] = 1 if changing else min(2 * trainer["interval"], cfg.assignment.max_interval)
                    trainer["next_assign"] = epoch + trainer["interval"]
                    row |= {"changed_fraction": result.changed_fraction, "assign_seconds": sum(result.timings.values())}
                    row |= {f"assign_{k}_seconds": v for k, v in result.timings.items()}
                    if result.blocked:
                        row["assignment_blocked"] = True

                generator.train()
                order = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
                targets = codes[trainer["perm"].to(device)]
                total_loss = total_l1 = 0.0
                for start in range(0, n, t.batch_size):
                    idx = order[start:start + t.batch_size].to(device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        pred = generator(targets[idx])
                    per_sample = loss_fn(pred.float(), images[idx])
                    optimizer.zero_grad(set_to_none=True)
                    per_sample.mean().backward()
                    optimizer.step()
                    total_loss += float(per_sample.detach().sum())
                    total_l1 += float((pred.detach().float() - images[idx]).abs().flatten(1).mean(1).sum())
                scheduler.step()

                row["loss"] = total_loss / n
                row["l1"] = total_l1 / n
                row["ssim"] = 1 - (row["loss"] - row["l1"]) / cfg.loss.ssim_weight if cfg.loss.ssim_weight else float("nan")
                row["lr"] = scheduler.get_last_lr()[0]
                row["seconds"] = time.monotonic() - tick
                history.append(row)
                trainer["epoch"] = epoch + 1
                last_good = snapshot()
                if "changed_fraction" in row:
                    checkpoint(last_good)
                progress.update(task, completed=trainer["epoch"], loss=row["loss"], ssim=row["ssim"],
                                changed=f"{row['changed_fraction']:.3f}" if "changed_fraction" in row else "-")
                if on_epoch_end is not None:
                    on_epoch_end(row)
                if budget is not None and time.monotonic() - started >= budget:
                    stopped_by_budget = True
                    break
        except KeyboardInterrupt:
            interrupted = True

    checkpoint(last_good)
    history = last_good["history"]
    if interrupted:
        return FitResult(out, last_good["trainer"]["epoch"], history, True, False, None)

    generator.eval()  # the live weights are last_good's: it was taken after the final epoch
    plots.training_curves(history, out / "loss.png")
    shown = torch.linspace(0, n - 1, min(n, 8)).long()
    with torch.no_grad():
        recon = generator(codes[trainer["perm"][shown].to(device)]).float().cpu()
    plots.real_vs_reconstruction(cohort.images[shown], recon, out / "recon.png")
    sha = write_hashes(out)
    return FitResult(out, trainer["epoch"], history, False, stopped_by_budget, sha)

