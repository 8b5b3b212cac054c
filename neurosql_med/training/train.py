"""The NeuroSQL trainer: exact assignment rounds alternating with generator regression.

``fit`` reads top to bottom: set-up, start (the initial OT assignment of PCA scores to
the lattice) or resume, then epochs of (maybe) an assignment round followed by one pass
of AdamW over the assigned pairs, then the pictures and hashes. Rounds run every epoch
while many codes still move and back off once they settle. A checkpoint is written at
the end of every assignment round and on Ctrl-C, so ``resume`` reaches exactly what an
uninterrupted run would.
"""
from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from neurosql_med.bounded import read_json, read_json_lines
from neurosql_med.training import distributed
from neurosql_med.viz import plots
from neurosql_med.engine.assignment import AssignmentProblem
from neurosql_med.engine.strata import stratified_lattice
from neurosql_med.training.averaging import LiveWeights, MovingAverage, weight_average
from neurosql_med.training.conditions import ConditionedCodes, PlainCodes, TrainingConditions, coding, training_conditions
from neurosql_med.config import Config, load_config
from neurosql_med.data.cohort import Cohort
from neurosql_med.errors import UserError
from neurosql_med.io.card import write_model_card
from neurosql_med.io.files import write_text
from neurosql_med.engine.lattice import quantile_lattice
from neurosql_med.engine.losses import ImageTerms, ReconstructionLoss, dice_counts, gradient_loss
from neurosql_med.engine.decoder import TemplateOutput, build_decoder, check_decoder_size, split_output
from neurosql_med.engine.refiner import RefinerTexture, fit_refiner
from neurosql_med.engine.residual import ResidualTexture, fit_texture
from neurosql_med.engine.tissue_texture import fit_tissue_texture
from neurosql_med.engine.schedule import warmup_cosine
from neurosql_med.io.model import (
    ASSIGNMENT,
    CHECKPOINT,
    CONFIG,
    FINGERPRINT,
    GEOMETRY,
    HASHES,
    HISTORY,
    LATTICE,
    LOSS_PLOT,
    RECON_PLOT,
    TEXTURE,
    folder_bytes,
    load_checkpoint,
    save_array,
    save_checkpoint,
    save_label_names,
    save_texture,
    write_hashes,
)
from neurosql_med.io.outputs import check_free_space, check_model_output, output_lock, prepare_model_output
from neurosql_med.runtime import autocast, resolve_device, seed_everything, to_device

EpochHook = Callable[[dict], None]
WARMUP_EPOCHS = 5
PREVIEW_SAMPLES = 8  # training images shown beside their reconstructions in recon.png
TEXTURE_BATCH = 64  # training images decoded at once when the residual texture is fitted


@dataclass
class FitResult:
    folder: Path
    epochs: int
    history: list[dict]
    interrupted: bool
    stopped_by_budget: bool
    model_sha256: str | None
    rank: int = 0  # under torchrun, the process that returned this (only rank 0 wrote the folder)


RESUMABLE = ("train__epochs", "train__max_minutes", "train__device")  # what --resume may change


def check_fit(cohort: Cohort | None, cfg: Config, out: Path | None, *, resume: bool, force: bool) -> None:
    """Every refusal a fit can make before it writes: --out, the device, the generator's size and,
    once the scans are loaded (``cohort``), their label maps and the disk space the model folder needs.
    ``out`` is None in a process that does not write the folder (a torchrun rank other than 0).

    `run.fit_config` runs it before the scans are loaded, `fit` again with them before it takes --out.
    What can only fail later (a disk filled meanwhile, a killed process) leaves a folder that
    `--resume` continues or, before the first checkpoint, the same command starts again (io/outputs.py).
    """
    if out is not None:
        check_model_output(out, resume=resume, force=force, inputs=[] if cohort is None else [cohort.discovery.root])
    resolve_device(cfg.train.device)
    if cohort is None:
        check_decoder_size(cfg.model, cfg.data.sample_shape())
        return
    if cohort.labels is not None:
        _checked_labels(cohort)
    num_labels = 0 if cohort.labels is None else len(cohort.label_names)
    width = 0 if cohort.conditions is None else cohort.conditions.shape[1]
    check_decoder_size(cfg.model, cfg.data.sample_shape(), num_labels, width)
    if out is not None:
        check_free_space(out, folder_bytes(cfg, len(cohort), num_labels, width), reclaimable=resume or force)


@dataclass
class Trainer:
    """The live objects of a fit, built the same way whether it starts or resumes.

    What varies between fits comes as pieces the loop asks the same way: where the samples
    are (``place``: alone or a torchrun shard), what the generator reads beside each code
    and how codes are assigned (``coding``: plain or per stratum under conditions), and
    which weights samples come from (``average``: the live ones or their moving average).
    """

    cfg: Config
    device: torch.device
    images: Tensor  # (n, 1, *sample_shape) on the device
    lattice: Tensor  # the fixed quantile lattice on the device; lattice[perm[i]] is image i's input
    generator: TemplateOutput
    loss_fn: ReconstructionLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    place: distributed.Placement  # this process's samples (images, labels) and the model it trains: all, or its shard
    coding: PlainCodes | ConditionedCodes  # what G reads beside each code, and how images are assigned codes
    average: LiveWeights | MovingAverage  # the weights samples come from (train.ema)
    labels: Tensor | None = None  # (n, 1, *sample_shape) int64 tissue classes on the device, voxel for voxel with images
    label_names: list[str] | None = None

    @property
    def writes(self) -> bool:
        """Whether this process writes the model folder: always alone, rank 0 under torchrun."""
        return self.place.rank == 0

    def inputs(self, perm: Tensor) -> Tensor:
        """The generator's inputs for image i: its code lattice[perm[i]], beside its condition for a conditional model."""
        return self.coding.inputs(self.lattice[perm.to(self.device)])



@dataclass
class TrainerState:
    """How far a fit has come: with the weights and optimiser, all a resume needs to continue exactly."""

    epoch: int  # epochs completed
    perm: Tensor  # perm[i]: the lattice row coding image i (on the CPU)
    interval: int = 1  # epochs between assignment rounds
    next_assign: int = 1  # the epoch at which the next round runs
    history: list[dict] = field(default_factory=list)  # one row per completed epoch

    def counters(self) -> dict:
        """The checkpoint's ``trainer`` entry; the history, with its timings, goes to history.jsonl."""
        return {"epoch": self.epoch, "perm": self.perm.clone(), "interval": self.interval, "next_assign": self.next_assign}


def fit(
    cohort: Cohort,
    cfg: Config,
    out: Path,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
    on_epoch_end: EpochHook | None = None,
) -> FitResult:
    """Train on ``cohort`` into the model folder ``out``; on Ctrl-C, keep the last completed epoch.

    Under ``torchrun`` every process calls this with the whole cohort; rank 0 prepares,
    locks and writes the folder (training/distributed.py).
    """
    out = Path(out)
    with distributed.process_group(cfg.train.device) as group:
        if group is not None and (cohort.conditions is not None or cfg.model.slice_levels):
            raise UserError("a conditional or slice-aware fit (--condition, model.slice_levels) runs in one process: "
                            "drop --nproc-per-node / torchrun for it")
        writes = group is None or group.rank == 0
        if writes:
            check_fit(cohort, cfg, out, resume=resume, force=force)
        with output_lock(out) if writes else contextlib.nullcontext():  # no second run writes into this folder
            if writes:
                prepare_model_output(out, resume=resume, force=force, inputs=[cohort.discovery.root])
            distributed.barrier(group)
            return _fit(cohort, cfg, out, resume, show_progress and writes, on_epoch_end, group)


def _fit(
    cohort: Cohort, cfg: Config, out: Path, resume: bool, show_progress: bool, on_epoch_end: EpochHook | None,
    group: distributed.Group | None = None,
) -> FitResult:
    """The fit itself, in a prepared and locked model folder: set up or resume, epochs, finish."""
    if resume:  # the saved config decides what is being continued
        cfg = _continued(load_config(out / CONFIG), cfg)
    t = cfg.train
    device = resolve_device(t.device) if group is None else group.device
    seed_everything(t.seed)
    conditioned = training_conditions(cohort, cfg)
    lattice = _lattice(len(cohort), cfg, conditioned)
    trainer = _set_up(cohort, cfg, lattice, device, group, conditioned)
    state = _resume(out, cohort, trainer) if resume else _start(out, cohort, trainer, lattice)
    if resume:  # the folder records the epoch total, budget and device this run continues with
        write_text(out / CONFIG, cfg.to_yaml())

    deadline = None if t.max_minutes is None else time.monotonic() + t.max_minutes * 60
    interrupted = stopped_by_budget = False
    last_good = snapshot(trainer, state)
    progress = _progress(labelled=trainer.labels is not None)
    task = progress.add_task("fit", total=t.epochs, completed=state.epoch, loss=float("nan"), ssim=float("nan"),
                             changed="-", dice="-")
    with progress if show_progress else contextlib.nullcontext():
        try:
            while state.epoch < t.epochs:
                tick = time.monotonic()
                row: dict = {"epoch": state.epoch + 1}
                if state.epoch >= state.next_assign:
                    row |= assignment_round(trainer, state)
                row |= train_epoch(trainer, state.perm, state.epoch)
                row["seconds"] = time.monotonic() - tick
                state.history.append(row)
                state.epoch += 1
                last_good = snapshot(trainer, state)
                trainer.place.check_interrupt()
                if "changed_fraction" in row and trainer.writes:  # a checkpoint after every assignment round
                    save_snapshot(out, last_good)
                progress.update(task, completed=state.epoch, **_shown(row))
                if on_epoch_end is not None:
                    on_epoch_end(row)
                if _out_of_time(deadline, trainer.place):
                    stopped_by_budget = True
                    break
        except KeyboardInterrupt:
            interrupted = True

    if trainer.writes:
        save_snapshot(out, last_good)
    if interrupted:
        return FitResult(out, last_good["trainer"]["epoch"], last_good["history"], True, False, None, trainer.place.rank)
    if not trainer.writes:
        return FitResult(out, state.epoch, state.history, False, stopped_by_budget, None, trainer.place.rank)
    return _finish(out, cohort, trainer, state, stopped_by_budget, show_progress)


def _out_of_time(deadline: float | None, place: distributed.Placement) -> bool:
    """Whether the time budget is spent; under torchrun, decided together so that all ranks stop at one epoch."""
    return deadline is not None and place.any(time.monotonic() >= deadline)


def _lattice(n: int, cfg: Config, conditioned: TrainingConditions | None) -> np.ndarray:
    """The fixed lattice: one for the cohort, or for a conditional or slice-aware model one per stratum, of its own size."""
    m, seed = cfg.model, cfg.train.seed
    if conditioned is None:
        return quantile_lattice(n, m.latent_dim, m.lattice, seed=seed)
    return stratified_lattice(conditioned.strata, m.latent_dim, m.lattice, seed=seed)


def _continued(saved: Config, cfg: Config) -> Config:
    """The saved config with the RESUMABLE fields (budget and device) taken from ``cfg``."""
    for key in RESUMABLE:
        section, name = key.split("__")
        setattr(getattr(saved, section), name, getattr(getattr(cfg, section), name))
    return saved


def epoch_lr(total: int) -> Callable[[int], float]:
    """LambdaLR's factor for each of ``total`` epochs.

    A plain function on purpose: LambdaLR saves a callable object's attributes in its
    state, which would change model.pt.
    """
    return lambda epoch: warmup_cosine(epoch, WARMUP_EPOCHS, total, step=1)


def _set_up(
    cohort: Cohort, cfg: Config, lattice: np.ndarray, device: torch.device, group: distributed.Group | None = None,
    conditioned: TrainingConditions | None = None,
) -> Trainer:
    """The same objects for a fresh and a resumed fit (a resume then loads their saved state).

    The generator starts at the training mean (its template), so its first epoch refines
    a brain instead of escaping a grey or black image. Under torchrun a rank keeps only
    its shard of the samples on the device; the templates still start at the whole cohort's mean.
    """
    t = cfg.train
    place = distributed.Alone(len(cohort)) if group is None else distributed.shard_by_subject(group, cohort.subjects)
    images = to_device(cohort.images[place.rows], device)
    labels = None if cohort.labels is None else to_device(_checked_labels(cohort)[place.rows], device)
    num_labels = 0 if labels is None else len(cohort.label_names)
    codes = coding(conditioned, device)
    width = 0 if conditioned is None else conditioned.values.shape[1]
    generator = build_decoder(cfg.model, cohort.geometry.sample_shape, num_labels, width).to(device)
    alone = place.world == 1  # then this process's images are the whole cohort, already on the device
    generator.init_template(images if alone else cohort.images)
    if labels is not None:
        generator.init_label_template(labels if alone else cohort.labels)
    place.wrap(generator, device)
    loss_fn = ReconstructionLoss(
        images.dim() - 2, cfg.loss.ssim_weight, cfg.loss.ssim_window, label_weight=cfg.loss.label_weight,
        laplacian_weight=cfg.loss.laplacian_weight, laplacian_levels=cfg.loss.laplacian_levels).to(device)
    optimizer = torch.optim.AdamW(generator.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, epoch_lr(t.epochs))
    points = torch.as_tensor(lattice, dtype=torch.float32, device=device)
    names = None if labels is None else list(cohort.label_names)
    return Trainer(cfg, device, images, points, generator, loss_fn, optimizer, scheduler, place, codes,
                   weight_average(generator, t.ema), labels, names)


def _checked_labels(cohort: Cohort) -> Tensor:
    """The cohort's label maps, once they fit its images and its class names (a bad map would train silently)."""
    labels, names = cohort.labels, cohort.label_names
    if names is None or len(names) < 2:
        raise UserError("label maps need at least 2 class names (index 0 is background)")
    if labels.shape != cohort.images.shape or labels.dtype != torch.int64:
        raise UserError(f"label maps {tuple(labels.shape)} {labels.dtype} do not match the images "
                        f"{tuple(cohort.images.shape)} as int64 class indices")
    if labels.min() < 0 or labels.max() >= len(names):
        raise UserError(f"label maps hold classes {int(labels.min())}..{int(labels.max())}, "
                        f"but only {len(names)} names ({', '.join(names)})")
    return labels


def _start(out: Path, cohort: Cohort, trainer: Trainer, lattice: np.ndarray) -> TrainerState:
    """Write the folder's fixed files and code each image by OT of its PCA scores to the lattice.

    Under torchrun rank 0 does both and broadcasts the codes.
    """
    cfg = trainer.cfg
    perm = np.zeros(len(cohort), dtype=np.int64)
    if trainer.writes:
        write_text(out / CONFIG, cfg.to_yaml())
        cohort.geometry.save(out / GEOMETRY)
        write_text(out / FINGERPRINT, json.dumps(cohort.fingerprint(), indent=2))
        save_array(out / LATTICE, lattice)
        if trainer.label_names is not None:
            save_label_names(out, trainer.label_names)
        trainer.coding.save(out, cohort)
        perm = trainer.coding.initial(cohort.images, lattice, cfg)  # the whole cohort's codes, also under torchrun
    perm = trainer.place.broadcast(perm)
    # the first round waits for one regression epoch on the PCA codes: an untrained generator
    # decodes every code to the same blur, which makes the first cost matrix degenerate and the LAP slow
    return TrainerState(epoch=0, perm=torch.as_tensor(perm), interval=1, next_assign=1)


def _resume(out: Path, cohort: Cohort, trainer: Trainer) -> TrainerState:
    """Load the last checkpoint, once the folder is whole and the scans are the ones it was trained on."""
    missing = [f for f in (FINGERPRINT, HISTORY) if not (out / f).is_file()]
    if missing:
        raise UserError(f"--resume: {out} is damaged ({', '.join(missing)} missing); start again with --force")
    if read_json(out / FINGERPRINT) != cohort.fingerprint():  # label maps and class names included
        raise UserError(f"--resume: these scans (or their label maps) differ from the ones {out} was trained on")
    saved = load_checkpoint(out / CHECKPOINT, trainer.device)
    trainer.generator.load_state_dict(saved["generator"])
    trainer.average.resume(saved)
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    counters = saved["trainer"]
    counters["perm"] = counters["perm"].cpu()  # loaded onto the device; rounds and assignment.npy read it with numpy
    history = read_json_lines(out / HISTORY)[: counters["epoch"]]
    if trainer.writes:
        (out / HASHES).unlink(missing_ok=True)  # the folder is in progress again
    return TrainerState(**counters, history=history)


def assignment_round(trainer: Trainer, state: TrainerState) -> dict:
    """Re-solve which lattice point codes which image for the current generator; its history fields.

    Rounds run every epoch while more than ``assignment.threshold`` of the codes change,
    then twice as far apart each time, up to ``assignment.max_interval`` epochs.
    """
    cfg, t = trainer.cfg.assignment, trainer.cfg.train
    problem = AssignmentProblem(trainer.generator, trainer.lattice, trainer.images, trainer.loss_fn, cfg, t.batch_size,
                                trainer.device, trainer.labels, trainer.place)
    result = trainer.coding.assign(problem, state.perm.numpy(), t.seed + state.epoch)
    state.perm = torch.as_tensor(result.perm)
    changing = result.changed_fraction > cfg.threshold
    state.interval = 1 if changing else min(2 * state.interval, cfg.max_interval)
    state.next_assign = state.epoch + state.interval
    row = {"changed_fraction": result.changed_fraction, "assign_seconds": sum(result.timings.values())}
    row |= {f"assign_{k}_seconds": v for k, v in result.timings.items()}
    if result.blocked:
        row["assignment_blocked"] = True
    return row


def train_epoch(trainer: Trainer, perm: Tensor, epoch: int) -> dict:
    """One AdamW pass over the (image, assigned lattice point) pairs in a seeded order; its history fields.

    Under torchrun each rank takes the members of each global batch that it holds (see
    training/distributed.py), so the order and the steps do not depend on the world size.
    """
    t, images, generator, optimizer = trainer.cfg.train, trainer.images, trainer.generator, trainer.optimizer
    place = trainer.place
    n = len(perm)  # images: as many as lattice points, or more with subject codes (a code per stack)
    generator.train()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
    inputs = trainer.inputs(perm)  # inputs[i]: the lattice point coding image i (and its condition)
    totals = _EpochTotals(trainer.label_names)
    largest = 0.0  # with train.grad_clip: the epoch's largest gradient norm before clipping (the same on every rank)
    for start in range(0, n, t.batch_size):
        batch = order[start:start + t.batch_size]
        idx, rows = place.local(batch)
        idx, rows = idx.to(trainer.device), rows.to(trainer.device)
        labels = None if trainer.labels is None else trainer.labels[rows]
        with autocast(trainer.device, t.amp):
            pred = place.model(inputs[idx])
        image_terms, label_loss = trainer.loss_fn.terms(pred.float(), images[rows], labels)
        per_sample = trainer.loss_fn.combined(image_terms, label_loss)
        if trainer.cfg.loss.gradient_weight:
            per_sample = per_sample + trainer.cfg.loss.gradient_weight * gradient_loss(pred[:, :1].float(), images[rows])
        optimizer.zero_grad(set_to_none=True)
        place.batch_loss(per_sample, len(batch)).backward()
        if t.grad_clip:
            largest = max(largest, float(torch.nn.utils.clip_grad_norm_(generator.parameters(), t.grad_clip)))
        optimizer.step()
        trainer.average.update(generator)
        totals.add(pred.detach().float(), labels, per_sample.detach(), image_terms, label_loss)
    trainer.scheduler.step()
    place.reduce(totals)
    clipped = {"grad_norm": largest} if t.grad_clip else {}
    return totals.row(n, trainer.cfg.loss.ssim_weight) | {"lr": trainer.scheduler.get_last_lr()[0]} | clipped


@dataclass
class _EpochTotals:
    """Sums over an epoch's batches of what its history row reports."""

    label_names: list[str] | None
    loss: float = 0.0
    l1: float = 0.0
    ssim: float = 0.0
    label_loss: float = 0.0
    agree: Tensor | float = 0.0  # per class: voxels where reconstruction and label map agree
    sizes: Tensor | float = 0.0  # per class: both maps' voxel counts

    def add(self, pred: Tensor, labels: Tensor | None, loss: Tensor, image: ImageTerms, label_loss: Tensor | None) -> None:
        """One batch: its detached predictions, label maps, per-sample loss, image terms and label loss."""
        self.loss += float(loss.sum())
        self.l1 += float(image.l1.detach().sum())
        if image.ssim is not None:
            self.ssim += float(image.ssim.detach().sum())
        if labels is not None:
            self.label_loss += float(label_loss.detach().sum())
            agree, sizes = dice_counts(pred[:, 1:], labels)
            self.agree, self.sizes = self.agree + agree, self.sizes + sizes

    def row(self, n: int, ssim_weight: float) -> dict:
        """loss, l1, ssim (NaN when the loss has no SSIM term); with labels also label_loss and the
        reconstructions' Dice (mean over non-background classes, per class)."""
        row: dict = {"loss": self.loss / n, "l1": self.l1 / n, "ssim": self.ssim / n if ssim_weight else float("nan")}
        if self.label_names is not None:
            dice = [1.0 if s == 0 else 2 * a / s for a, s in zip(self.agree.tolist(), self.sizes.tolist())]
            row |= {"label_loss": self.label_loss / n, "dice": sum(dice[1:]) / len(dice[1:]),
                    "dice_per_class": dict(zip(self.label_names, dice))}
        return row


def snapshot(trainer: Trainer, state: TrainerState) -> dict:
    """Everything a resumed run needs, as of the end of the last completed epoch.

    Wall-clock timings stay out of the checkpoint (they go to history.jsonl) so the
    same seed on the same device gives a byte-identical model.pt.
    """
    return {
        "generator": {k: v.detach().clone() for k, v in trainer.generator.state_dict().items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "scheduler": copy.deepcopy(trainer.scheduler.state_dict()),
        "trainer": state.counters(),
        "history": list(state.history),
    } | trainer.average.checkpoint()


def save_snapshot(out: Path, snap: dict) -> None:
    """What ``resume`` reads: model.pt, with the assignment and the history beside it.

    model.pt comes last: a write that fails before it leaves the last checkpoint whole, and
    a history running ahead of it is cut to the checkpoint's epochs when resumed.
    """
    save_array(out / ASSIGNMENT, snap["trainer"]["perm"].numpy())
    write_text(out / HISTORY, "".join(json.dumps(r) + "\n" for r in snap["history"]))
    save_checkpoint(out / CHECKPOINT, {k: v for k, v in snap.items() if k != "history"})


def _finish(
    out: Path, cohort: Cohort, trainer: Trainer, state: TrainerState, stopped_by_budget: bool, show_progress: bool,
) -> FitResult:
    """The pictures and the model card, then the hashes that mark the folder complete."""
    trainer.generator.eval()  # the live weights are the last snapshot's: it was taken after the final epoch
    plots.training_curves(state.history, out / LOSS_PLOT)
    n = len(cohort)
    shown = torch.linspace(0, n - 1, min(n, PREVIEW_SAMPLES)).long()
    with torch.no_grad():
        recon, logits = split_output(trainer.generator(trainer.inputs(state.perm)[shown.to(trainer.device)]).float().cpu())
    labels = None if logits is None else (cohort.labels[shown], logits.argmax(1, keepdim=True))
    plots.real_vs_reconstruction(cohort.images[shown], recon, out / RECON_PLOT, labels=labels, label_names=trainer.label_names)
    _write_texture(out, cohort, trainer, state, show_progress)
    write_model_card(out, state.history, trainer.device.type, None if cohort.label_names is None else len(cohort.label_names))
    sha = write_hashes(out)
    return FitResult(out, state.epoch, state.history, False, stopped_by_budget, sha)


def _write_texture(out: Path, cohort: Cohort, trainer: Trainer, state: TrainerState, show_progress: bool) -> None:
    """texture.pt from the residuals of the weights samples come from (the moving average under train.ema)."""
    model = trainer.cfg.model
    if not model.texture:
        (out / TEXTURE).unlink(missing_ok=True)  # a refit without texture leaves no stale one to be hashed
        return
    generator = trainer.average.sampled(trainer.generator)
    inputs = trainer.inputs(state.perm)
    with torch.no_grad():
        outputs = [split_output(generator(inputs[i:i + TEXTURE_BATCH]).float().cpu())
                   for i in range(0, len(inputs), TEXTURE_BATCH)]
    recon = torch.cat([image for image, _ in outputs])
    if model.texture_mode == "global":
        save_texture(out, fit_texture(cohort.images, recon, model.texture, model.texture_cutoff, model.texture_spectrum))
        return
    decoded = None if cohort.labels is None else torch.cat([logits.argmax(1, keepdim=True) for _, logits in outputs])
    if model.texture_mode == "refiner":
        grain = fit_texture(cohort.images, recon, model.texture, model.texture_cutoff, model.texture_spectrum)
        save_texture(out, _fit_refiner(cohort.images, recon, decoded, grain, trainer, show_progress))
        return
    save_texture(out, fit_tissue_texture(cohort.images, recon, model.texture, model.texture_cutoff, cohort.labels, decoded,
                                         len(trainer.label_names or ())))


def _fit_refiner(
    images: torch.Tensor, recon: torch.Tensor, decoded: torch.Tensor | None, grain: ResidualTexture, trainer: Trainer,
    show_progress: bool,
) -> RefinerTexture:
    """The stochastic refiner's steps, on the reconstructions of the weights samples come from."""
    cfg = trainer.cfg
    steps = cfg.model.refiner_steps
    bar = Progress(TextColumn("[bold]refiner[/] step {task.completed}/{task.total}"), BarColumn(),
                   TextColumn("L1 {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    task = bar.add_task("refiner", total=steps, loss=float("nan"))
    with bar if show_progress else contextlib.nullcontext():
        return fit_refiner(images, recon, decoded, len(trainer.label_names or ()), grain, steps,
                           cfg.train.seed, trainer.device, lambda step, loss: bar.update(task, completed=step, loss=loss))


def _progress(labelled: bool) -> Progress:
    dice = "  dice {task.fields[dice]}" if labelled else ""
    return Progress(
        TextColumn("[bold]fit[/] epoch {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  ssim {task.fields[ssim]:.3f}" + dice + "  changed {task.fields[changed]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        transient=False,
    )


def _shown(row: dict) -> dict:
    """The progress bar's fields for an epoch's history row."""
    changed = f"{row['changed_fraction']:.3f}" if "changed_fraction" in row else "-"
    dice = f"{row['dice']:.3f}" if "dice" in row else "-"
    return {"loss": row["loss"], "ssim": row["ssim"], "changed": changed, "dice": dice}
