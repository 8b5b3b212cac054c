"""Which downstream network lets the real arm learn a covariate from k subjects? `real_arm.py`'s real arm with the
`regress` / `classify` network swapped per variant (`segment` untouched); one process loads the cohort once.

    python benchmarks/covariate_variants.py COHORT TASK K 'VARIANT|VARIANT|...' [seeds=0,1,2]

A VARIANT is comma-separated key=value (docs/results/realistic.md, "A network that reads the whole brain's ranks"):
body=monai (MONAI Regressor/Classifier; ch=8;16;32;64, st=strides) or body=gap (conv-norm-ReLU blocks, max pooling
between, global average pooling, linear head; ch=8;16;32, norm=none|in|bn|ln, drop=dropout); pool=N (average-pool the
input N x first); std=1 (z-score each image); hist=1 (foreground ranks, as `covariate.ForegroundRanks`); lr=
(default: the package's LR); wd= (AdamW weight decay); steps=1000; classic=1; band=LO;HI (keep slices whose relative
level is in [LO, HI], training and test). Prints one line per variant: test per seed, mean, trivial, training per seed.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import real_arm
import torch
from monai.networks.nets import Classifier, Regressor
from torch import nn

from neurosql_med.data.cohort import Cohort
from neurosql_med.evaluation.options import UtilityOptions
from neurosql_med.evaluation.utility import networks
from neurosql_med.evaluation.utility.covariate import ForegroundRanks
from neurosql_med.evaluation.utility.run import _splits, load_study
from neurosql_med.evaluation.utility.tasks import Task

VARIANT: dict[str, str] = {}  # the variant being run; read by the patched builder and optimiser
PACKAGE_BUILD = networks.build_network
ADAM = torch.optim.Adam


class ZScore(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)


def pooled_body(channels: tuple[int, ...], outputs: int, norm: str, drop: float) -> list[nn.Module]:
    """Conv 3x3 - norm - ReLU blocks, max pooling between them, global average pooling, dropout, a linear head."""
    norms = {"bn": nn.BatchNorm2d, "in": lambda c: nn.InstanceNorm2d(c, affine=True), "ln": lambda c: nn.GroupNorm(1, c)}
    layers: list[nn.Module] = []
    previous = 1
    for i, width in enumerate(channels):
        layers += [nn.Conv2d(previous, width, 3, padding=1), *([norms[norm](width)] if norm in norms else []), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if i < len(channels) - 1 else []
        previous = width
    return layers + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), *([nn.Dropout(drop)] if drop else []), nn.Linear(previous, outputs)]


def build(task: Task, shape: tuple[int, ...], outputs: int) -> nn.Module:
    """The variant's network for regress / classify (2D); the package's for segment."""
    if task.kind == "segment":
        return PACKAGE_BUILD(task, shape, outputs)
    v, pool = VARIANT, int(VARIANT.get("pool", 1))
    pre = ([nn.AvgPool2d(pool)] if pool > 1 else []) + ([ZScore()] if v.get("std") == "1" else []) + \
        ([ForegroundRanks()] if v.get("hist") == "1" else [])
    shape = tuple(s // pool for s in shape)
    n = 1 if task.kind == "regress" else outputs
    if v.get("body", "monai") == "monai":
        ch = tuple(int(c) for c in v.get("ch", "8;16;32;64").split(";"))
        st = tuple(int(c) for c in v.get("st", ";".join(["2"] * len(ch))).split(";"))
        net = Regressor((1, *shape), (1,), ch, st) if task.kind == "regress" else Classifier((1, *shape), n, ch, st)
        return nn.Sequential(*pre, net)
    ch = tuple(int(c) for c in v.get("ch", "8;16;32").split(";"))
    return nn.Sequential(*pre, *pooled_body(ch, n, v.get("norm", "none"), float(v.get("drop", 0))))


def optimiser(params, lr: float) -> torch.optim.Optimizer:
    """Adam at the variant's lr (default: the package's), AdamW when it sets wd."""
    wd, lr = float(VARIANT.get("wd", 0)), float(VARIANT.get("lr", lr))
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd) if wd else ADAM(params, lr=lr)


def band(cohort: Cohort, low: float, high: float) -> Cohort:
    return cohort.subset(np.array([i for i, level in enumerate(cohort.slice_levels) if low <= level <= high]))


def main(argv: list[str]) -> None:
    cohort, task, k, variants = Path(argv[0]), argv[1], int(argv[2]), argv[3].split("|")
    opts = dict(a.split("=", 1) for a in argv[4:])
    seeds = [int(s) for s in opts.get("seeds", "0,1,2").split(",")]
    torch.set_num_threads(1)
    networks.build_network, torch.optim.Adam = build, optimiser
    options = UtilityOptions(scans=cohort / "bids", task=task, holdout=cohort / "heldout", device="cpu", steps=1000,
                             out=Path("real-arm"))
    loaded = load_study(options)
    splits = _splits(loaded, seeds, options.test_share, [k])
    for spec in variants:
        VARIANT.clear()
        VARIANT.update(kv.split("=", 1) for kv in spec.split(",") if kv)
        classic = VARIANT.pop("classic", "0") == "1"
        study = dataclasses.replace(loaded, steps=int(VARIANT.pop("steps", 1000)))
        if "band" in VARIANT:
            low, high = (float(x) for x in VARIANT.pop("band").split(";"))
            study = dataclasses.replace(study, pool=band(study.pool, low, high), holdout=band(study.holdout, low, high))
        start = time.time()
        scores = [real_arm.run(study, splits[seed].training(k), seed, classic) for seed in seeds]
        trivial = np.mean([real_arm.trivial(study, splits[seed].training(k)) for seed in seeds])
        print(f"{task} | {spec} | test {' '.join(f'{t:.3f}' for t, _ in scores)} | mean {np.mean([t for t, _ in scores]):.3f}"
              f" | trivial {trivial:.3f} | training {' '.join(f'{r:.3f}' for _, r in scores)} | {time.time() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
