"""`nsql-med utility`: train the same network in five arms for every training-set size k and seed.

Everything the user can get wrong (the task, its column, the label maps, too few
subjects, an --out holding another run) is refused before the first network trains.
utility.json is rewritten after every finished run, so an interrupted grid continues
with ``resume`` where it stopped; utility.md and utility.png are drawn at the end.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from neurosql_med.bounded import read_json
from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.errors import UserError
from neurosql_med.evaluation.utility import arms as arm_names
from neurosql_med.evaluation.options import UtilityOptions
from neurosql_med.evaluation.utility.arms import ARMS
from neurosql_med.evaluation.utility.augment import STRENGTH, ClassicAugmentation, transforms_text
from neurosql_med.evaluation.utility.design import SeedSplit, check_design, split_seed, training_cohort
from neurosql_med.evaluation.utility.networks import TrainingSet, network_name, score, target_scale, train_network
from neurosql_med.evaluation.utility.report import stat, summarize, utility_figure, utility_markdown
from neurosql_med.evaluation.utility.synthetic import NeuroSQLFit, SyntheticCases, synthetic_cases
from neurosql_med.evaluation.utility.tasks import Targets, Task, parse_task, read_targets
from neurosql_med.io.files import write_text
from neurosql_med.io.outputs import check_output_path, output_lock
from neurosql_med.runtime import resolve_device

RESULT, MARKDOWN, FIGURE = "utility.json", "utility.md", "utility.png"
# What decides every run's result: a resumed grid must share them (k values and seeds may be added).
FIXED = ("scans", "task", "holdout", "holdout_fraction", "synthetic_per_real", "schedule", "classic", "steps",
         "nsql_steps", "config", "mode", "synthesis", "near_codes")
SYNTHESIS = "conditional"  # how regress/classify cases get their targets; grids of the earlier per-stratum fits differ


@dataclass(frozen=True)
class Study:
    """What every run of a grid shares."""

    task: Task
    pool: Cohort  # the subjects training sets are drawn from
    holdout: Cohort | None  # a --holdout folder's subjects, else a test set is drawn per seed from ``pool``
    targets: Targets | None  # regress / classify
    names: list[str]  # label classes (segment) or the column's levels (classify)
    nsql: NeuroSQLFit
    steps: int
    ratios: list[float]  # synthetic cases per real training sample, one grid column set per ratio
    schedule: str  # "constant" | "decay": the synthetic share of each batch over training
    device: torch.device
    out: Path

    @property
    def outputs(self) -> int:
        return 1 if self.task.kind == "regress" else len(self.names)


def run_utility(options: UtilityOptions, *, show_progress: bool = True) -> dict:
    """Run (or with ``resume`` finish) the grid; writes utility.json/.md/.png to --out and returns utility.json's content."""
    o, parsed = options, parse_task(options.task)
    ks, seed_list, ratios = sorted(set(o.train_subjects)), sorted(set(o.seeds)), _ratios(o)
    out = Path(o.out)
    check_output_path(out, inputs=[Path(p) for p in (o.scans, o.holdout) if p is not None])
    settings = {
        "scans": str(o.scans), "task": parsed.name, "holdout": None if o.holdout is None else str(o.holdout),
        "holdout_fraction": None if o.holdout is not None else o.test_share, "synthetic_per_real": ratios,
        "schedule": o.schedule, "near_codes": o.near_codes,
        "classic": {"strength": STRENGTH, "transforms": list(transforms_text())},
        "steps": o.steps, "nsql_steps": o.nsql_steps, "config": str(o.config), "mode": o.mode, "synthesis": SYNTHESIS,
        "train_subjects": ks, "seeds": seed_list, "arms": arm_names.expand(ratios),
        "device": str(resolve_device(o.device)),
    }
    with output_lock(out):
        result = _start(out, settings, o.resume)
        study = load_study(o)
        splits = _splits(study, seed_list, o.test_share, ks)
        result["splits"] |= {str(s): {"test": sp.test, "train": {str(k): sp.training(k) for k in ks}} for s, sp in splits.items()}
        _grid(study, splits, ks, result, show_progress)
        shown = [r for r in result["runs"] if r["seed"] in seed_list]  # a resumed --out may hold other seeds' runs
        metrics = list(dict.fromkeys(m for r in shown for m in r["scores"]))
        result["summary"] = summarize(shown, settings["arms"], ks, metrics)
        if parsed.kind == "regress":
            result["summary"]["reference"] = {"mae": _mean_predictor(study, splits, ks)}
        _save(out, result)
        write_text(out / MARKDOWN, utility_markdown(result))
        utility_figure(out / FIGURE, result)
    return result


def _start(out: Path, settings: dict, resume: bool) -> dict:
    """A fresh result, or with ``resume`` the finished runs of the grid in ``out`` (made with the same FIXED settings)."""
    path = out / RESULT
    if not path.is_file():
        return {"settings": settings, "splits": {}, "fits": [], "runs": []}
    if not resume:
        raise UserError(f"{out} already holds {RESULT}; use --resume to continue that grid, or choose another --out")
    try:
        saved = read_json(path)
        changed = [key for key in FIXED if saved["settings"].get(key) != settings[key]]
        kept = {"fits": list(saved["fits"]), "runs": list(saved["runs"]), "splits": dict(saved["splits"])}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"--resume: {path} is not a utility.json nsql-med wrote") from None
    if changed:
        raise UserError(f"--resume: {out} was run with other settings ({', '.join(changed)}); use another --out")
    return {"settings": settings, **kept}


def load_study(options: UtilityOptions) -> Study:
    """The cohorts and targets, every check on them done: nothing has trained yet."""
    o, task = options, parse_task(options.task)
    cfg = override(load_config(o.config), data__mode=o.mode, data__labels=None if task.kind == "segment" else "none")
    pool = load_cohort(o.scans, cfg.data)
    held = None if o.holdout is None else load_cohort(o.holdout, cfg.data)
    names: list[str] = []
    targets = None
    if task.kind == "segment":
        names = _label_classes(pool, held)
    else:
        targets = read_targets(task, [pool.discovery] + ([held.discovery] if held else []))
        names = targets.levels or []
    dev = resolve_device(o.device)
    nsql = NeuroSQLFit(cfg, o.nsql_steps, dev.type, o.near_codes)
    return Study(task, pool, held, targets, names, nsql, o.steps, _ratios(o), o.schedule, dev, Path(o.out))


def _ratios(options: UtilityOptions) -> list[float]:
    """The synthetic-per-real ratios of the grid, each once, ascending."""
    return sorted(set(map(float, options.synthetic_per_real)))


def _label_classes(pool: Cohort, held: Cohort | None) -> list[str]:
    """The tissue classes a segment task predicts; refused when any scan lacks its label map."""
    for cohort in (pool, held):
        if cohort is not None and cohort.labels is None:
            found = sum(s.labels is not None and s.labels_problem is None for s in cohort.discovery.scans)
            raise UserError(f"{cohort.discovery.root}: --task segment needs a tissue label map for every scan "
                            f"(e.g. BIDS *_dseg.nii.gz beside each T1w, or --labels in a config); "
                            f"{found} of {len(cohort.discovery.scans)} scans have one")
    count = int(max(pool.labels.max(), held.labels.max() if held else 0)) + 1  # type: ignore[union-attr, arg-type]
    named = pool.label_names or []
    return list(named[:count]) + [f"class {i}" for i in range(len(named), count)]


def _splits(study: Study, seeds: list[int], holdout_fraction: float, ks: list[int]) -> dict[int, SeedSplit]:
    fixed = None if study.holdout is None else study.holdout.subjects
    check_design(study.pool.subjects, ks, holdout_fraction=holdout_fraction, fixed_test=fixed, targets=study.targets)
    return {s: split_seed(study.pool.subjects, s, holdout_fraction=holdout_fraction, fixed_test=fixed,
                          targets=study.targets) for s in seeds}


def _mean_predictor(study: Study, splits: dict[int, SeedSplit], ks: list[int]) -> dict:
    """Regression's yardstick per k: the MAE of calling every test subject the training subjects' mean (no image)."""
    values = study.targets.values  # type: ignore[union-attr]
    found: dict[str, list[float]] = {}
    for split in splits.values():
        test = sorted(set(study.holdout.subjects)) if study.holdout is not None else split.test
        for k in ks:
            mean = float(np.mean([values[s] for s in split.training(k)]))
            found.setdefault(str(k), []).append(float(np.mean([abs(values[s] - mean) for s in test])))
    return {k: stat(v) for k, v in found.items()}


class Display:
    """The rich progress display: the whole grid, and the fit or training under way."""

    def __init__(self, progress: Progress, total: int):
        self.progress = progress
        self.grid = progress.add_task("utility grid", total=total)
        self.current = progress.add_task("", total=None)

    def start(self, description: str, total: int | None) -> None:
        self.progress.reset(self.current, description=description, total=total)

    def advance(self, *_: object) -> None:
        self.progress.advance(self.current)

    def run_done(self) -> None:
        self.progress.advance(self.grid)


def _grid(study: Study, splits: dict[int, SeedSplit], ks: list[int], result: dict, show_progress: bool) -> None:
    done = {(r["arm"], r["k"], r["seed"]) for r in result["runs"]}
    arms = arm_names.expand(study.ratios)
    todo = [(splits[s], k, [a for a in arms if (a, k, s) not in done]) for s in splits for k in ks]
    total = sum(len(arms) for *_, arms in todo)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), disable=not show_progress or total == 0)
    with progress:
        display = Display(progress, total)
        for split, k, arms in todo:
            if arms:
                _cell(study, split, k, arms, result, display)


def _cell(study: Study, split: SeedSplit, k: int, arms: list[str], result: dict, display: Display) -> None:
    """The arms still to run for one training-set size and seed; NeuroSQL is fitted once for all of them."""
    train = training_cohort(study.pool, split.training(k))
    test = study.holdout if study.holdout is not None else training_cohort(study.pool, split.test)
    synth = _synthesize(study, train, k, split.seed, result, display) if any(map(arm_names.uses_neurosql, arms)) else None
    values = [study.targets.values[s] for s in split.training(k)] if study.task.kind == "regress" else [0.0]  # type: ignore[union-attr]
    scale = target_scale(values) if study.task.kind == "regress" else (0.0, 1.0)
    for arm in arms:
        display.start(f"k={k} seed {split.seed}: {arm_names.label(arm)}", study.steps)
        result["runs"].append(_run_arm(study, arm, train, synth, test, scale, split.seed, k, display.advance))
        _save(study.out, result)
        display.run_done()


def _synthesize(study: Study, train: Cohort, k: int, seed: int, result: dict, display: Display) -> SyntheticCases:
    display.start(f"k={k} seed {seed}: fitting NeuroSQL on the {k} training subjects (epochs)", None)
    cases = synthetic_cases(study.task, study.targets, train, max(study.ratios), study.nsql,
                            study.out / "models" / f"k{k}-seed{seed}", seed, on_epoch=display.advance)
    result["fits"] = [f for f in result["fits"] if (f["k"], f["seed"]) != (k, seed)]
    result["fits"].append({"k": k, "seed": seed, **cases.fit})
    return cases


def _run_arm(study: Study, arm: str, train: Cohort, synth: SyntheticCases | None, test: Cohort,
             scale: tuple[float, float], seed: int, k: int, advance: Callable[[], None]) -> dict:
    real, classic, synthetic = ARMS[arm_names.base(arm)]
    cases = _first_cases(synth, round(arm_names.ratio(arm, study.ratios) * len(train))) if synthetic else None
    data = _training_set(study, train if real else None, cases, scale)
    augment = ClassicAugmentation(train.images.ndim - 2, seed) if classic else None
    started = time.monotonic()
    trained = train_network(study.task, data, study.outputs, steps=study.steps, seed=seed, augment=augment,
                            device=study.device, advance=advance, schedule=study.schedule)
    seconds = time.monotonic() - started
    scores = score(study.task, trained, test.images, _truth(study, test), test.subjects, study.names, scale)
    return {
        "arm": arm, "k": k, "seed": seed, "scores": {m: v if math.isfinite(v) else None for m, v in scores.items()},
        "seconds": seconds, "steps": trained.steps, "network": network_name(study.task), "parameters": trained.parameters,
        "real_samples": len(train) if real else 0, "synthetic_samples": len(cases.images) if cases else 0,
        "test_subjects": len(set(test.subjects)),
    }


def _first_cases(synth: SyntheticCases | None, n: int) -> SyntheticCases:
    """The first ``n`` (>= 1) cases: a lower ratio trains on a subset of a higher ratio's cases."""
    assert synth is not None
    n = max(1, n)
    return SyntheticCases(synth.images[:n], synth.targets[:n], synth.fit)


def _truth(study: Study, cohort: Cohort) -> torch.Tensor:
    """Per sample: the label map (segment) or the subject's target, in the column's units or as a level index."""
    if study.task.kind == "segment":
        return cohort.labels  # type: ignore[return-value]
    return torch.tensor([study.targets.values[s] for s in cohort.subjects])  # type: ignore[union-attr]


def _training_set(study: Study, train: Cohort | None, synth: SyntheticCases | None, scale: tuple[float, float]) -> TrainingSet:
    parts = ([(train.images, _truth(study, train))] if train is not None else []) + \
            ([(synth.images, synth.targets)] if synth is not None else [])
    images, targets = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    synthetic = len(synth.images) if synth is not None else 0
    if study.task.kind == "regress":
        return TrainingSet(images, ((targets.double() - scale[0]) / scale[1]).float(), synthetic)
    return TrainingSet(images, targets.long(), synthetic)


def _save(out: Path, result: dict) -> None:
    write_text(out / RESULT, json.dumps(result, indent=2, allow_nan=False))

