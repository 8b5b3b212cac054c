"""Did the condition take effect? Agreement of a covariate predictor, and effect sizes, real vs synthetic.

*Agreement*: for each covariate a small MONAI network (a Classifier for categories, a
Regressor for numbers) is trained on real images to predict it, then asked about the
synthetic images: its accuracy (or MAE) against the values they were generated for sits
beside the same network's score on held-out real subjects, the most one can expect.
*Effect sizes*: a simple image measure, the brain tissue fraction (grey + white matter
over all brain voxels from the label maps when both sides have them, else the share of
brain voxels brighter than ``TISSUE_LEVEL``), is compared between levels (each level
against the first) or along a continuous covariate (the least-squares slope), in real
and in synthetic data: the synthetic effect should have the real one's sign and size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import Classifier, Regressor
from torch import Tensor

from neurosql_med.bounded import read_json
from neurosql_med.data.cohort import Cohort
from neurosql_med.engine.conditioning import ConditionSpec, Covariate
from neurosql_med.errors import UserError
from neurosql_med.evaluation.small_network import Schedule, train_small_network
from neurosql_med.evaluation.splits import split_by_subject
from neurosql_med.metrics import audit, fidelity
from neurosql_med.synthesis.sampling import sidecar_of

CHANNELS = (8, 16, 32)
STRIDES = (2, 2, 2)
TRAINING = Schedule(epochs=25, batch_size=32, lr=3e-3)
SEED = 0
HOLDOUT_FRACTION = 0.2
FOREGROUND = 0.05  # intensity in [0, 1] above which a voxel is brain (the images are skull-stripped)
TISSUE_LEVEL = 0.35  # intensity above which a brain voxel counts as tissue rather than CSF, without label maps
CSF_CLASS = 1  # in the label maps: 0 background, 1 CSF, then tissue classes


def synthetic_conditions(folder: Path, ids: list[str], spec: ConditionSpec) -> list[dict]:
    """The condition each synthetic image was generated for, from its sidecar (``id`` is its path under ``folder``)."""
    found = []
    for name in ids:
        side = sidecar_of(folder / name.split(" [")[0])
        try:
            recorded = read_json(side)["Condition"]
        except (OSError, KeyError, TypeError):
            raise UserError(f"{side}: no Condition recorded; evaluate a cohort the conditional model wrote") from None
        found.append(spec.parse(recorded, str(side)))
    return found


def tissue_fraction(images: Tensor, labels: Tensor | None) -> np.ndarray:
    """Per image: tissue voxels over brain voxels (labels: classes > CSF over classes > 0)."""
    if labels is not None:
        brain = (labels > 0).flatten(1).sum(1).clamp(min=1)
        return ((labels > CSF_CLASS).flatten(1).sum(1) / brain).double().numpy()
    brain = images > FOREGROUND
    return ((images > TISSUE_LEVEL).flatten(1).sum(1) / brain.flatten(1).sum(1).clamp(min=1)).double().numpy()


def _effects(covariate: Covariate, measure: np.ndarray, values: list) -> dict:
    """Differences of the mean measure from the first level, or the slope per unit of a continuous covariate."""
    if covariate.kind == "continuous":
        x = np.asarray(values, dtype=np.float64)
        return {"slope": float(np.polyfit(x, measure, 1)[0]) if np.ptp(x) > 0 else None}
    means = {lv: float(measure[[v == lv for v in values]].mean()) for lv in covariate.levels if lv in values}
    base = covariate.levels[0]
    return {f"{lv} - {base}": (m - means[base] if base in means else None) for lv, m in means.items() if lv != base}


def effect_sizes(spec: ConditionSpec, real: tuple[np.ndarray, list[dict]], synth: tuple[np.ndarray, list[dict]]) -> dict:
    """Per covariate and contrast: the real and synthetic effect, whether the signs agree, and synthetic / real."""
    section = {}
    for covariate in spec.covariates:
        name = covariate.name
        r = _effects(covariate, real[0], [c[name] for c in real[1]])
        s = _effects(covariate, synth[0], [c[name] for c in synth[1]])
        section[name] = {
            key: {"real": value, "synthetic": s.get(key),
                  "same_sign": None if value is None or s.get(key) is None else bool(np.sign(value) == np.sign(s[key])),
                  "ratio": None if not value or s.get(key) is None else s[key] / value}
            for key, value in r.items()
        }
    return section


def _network(covariate: Covariate, shape: tuple[int, ...]) -> torch.nn.Module:
    strides = STRIDES[: min(len(STRIDES), int(np.log2(min(shape))) - 1)]
    channels = CHANNELS[: len(strides)]
    if covariate.kind == "categorical":
        return Classifier((1, *shape), len(covariate.levels), channels, strides)
    return Regressor((1, *shape), (1,), channels, strides)


def _targets(covariate: Covariate, conditions: list[dict]) -> Tensor:
    values = [c[covariate.name] for c in conditions]
    if covariate.kind == "categorical":
        return torch.tensor([covariate.levels.index(v) for v in values])
    return torch.tensor([(float(v) - covariate.mean) / covariate.std for v in values], dtype=torch.float32)[:, None]


def _train(covariate: Covariate, images: Tensor, targets: Tensor) -> torch.nn.Module:
    """A few seeded epochs of Adam on the real training images."""
    loss = torch.nn.CrossEntropyLoss() if covariate.kind == "categorical" else torch.nn.L1Loss()
    return train_small_network(lambda: _network(covariate, tuple(images.shape[2:])), loss, TRAINING.passes(images, targets),
                               lr=TRAINING.lr, seed=SEED)


def _score(covariate: Covariate, net: torch.nn.Module, images: Tensor, targets: Tensor) -> float:
    """Accuracy for a category, mean absolute error in the covariate's own units for a number."""
    with torch.no_grad():
        out = torch.cat([net(chunk) for chunk in images.split(TRAINING.batch_size)])
    if covariate.kind == "categorical":
        return float((out.argmax(1) == targets).float().mean())
    return float((out - targets).abs().mean() * covariate.std)


def agreement(spec: ConditionSpec, real: Cohort, synth: Tensor, synth_conditions: list[dict]) -> dict:
    """Per covariate: the predictor's score on synthetic images (against what they were asked for) and held-out real."""
    train, held = split_by_subject(real, HOLDOUT_FRACTION, SEED)
    section = {}
    for covariate in spec.covariates:
        net = _train(covariate, train.images, _targets(covariate, train.condition_values))
        metric = "accuracy" if covariate.kind == "categorical" else "mae"
        section[covariate.name] = {
            "metric": metric,
            "synthetic": _score(covariate, net, synth, _targets(covariate, synth_conditions)),
            "holdout_real": _score(covariate, net, held.images, _targets(covariate, held.condition_values)),
        }
    return section


def per_stratum(spec: ConditionSpec, real: Cohort, synth: Tensor, synth_conditions: list[dict], tau: float) -> dict:
    """Fidelity and the memorization audit within each stratum: a small stratum is where copies happen."""
    real_keys = [spec.stratum(c) for c in real.condition_values]
    synth_keys = [spec.stratum(c) for c in synth_conditions]
    names = [c.name for c in spec.covariates if c.kind == "categorical"]
    section = {}
    for key in sorted(set(real_keys)):
        r = real.images[torch.as_tensor([k == key for k in real_keys])]
        s = synth[torch.as_tensor([k == key for k in synth_keys])]
        row: dict = {"real": len(r), "synthetic": len(s)}
        if len(s) and len(r) >= 2:
            memo = audit(r, s, tau)
            row |= {"fidelity_mae": fidelity(s, r)["mae"], "flagged": memo["n_flagged"],
                    "fraction_flagged": memo["fraction_flagged"]}
        section[", ".join(f"{n}={v}" for n, v in zip(names, key)) or "all"] = row
    return section


def condition_section(spec: ConditionSpec, real: Cohort, synth: Tensor, synth_labels: Tensor | None,
                      synth_conditions: list[dict], tau: float) -> dict:
    """The report's ``conditions`` section."""
    use_labels = real.labels is not None and synth_labels is not None
    measure = "tissue fraction from the label maps" if use_labels else f"share of brain voxels above {TISSUE_LEVEL}"
    real_measure = tissue_fraction(real.images, real.labels if use_labels else None)
    synth_measure = tissue_fraction(synth, synth_labels if use_labels else None)
    return {
        "agreement": agreement(spec, real, synth, synth_conditions),
        "effects": effect_sizes(spec, (real_measure, real.condition_values), (synth_measure, synth_conditions)),
        "strata": per_stratum(spec, real, synth, synth_conditions, tau),
        "measure": measure,
        "predictor": {"networks": "MONAI Classifier / Regressor", "channels": list(CHANNELS), "epochs": TRAINING.epochs,
                      "holdout_fraction": HOLDOUT_FRACTION, "seed": SEED},
    }


def condition_rows(section: dict) -> list[tuple[str, str, str, str]]:
    """(section, metric, value, reading) rows for the terminal table and report.md."""
    rows = [("condition", f"{name} {a['metric']}: synthetic / held-out real", f"{a['synthetic']:.3g} / {a['holdout_real']:.3g}",
             "predictor trained on real images")
            for name, a in section["agreement"].items()]
    for name, contrasts in section["effects"].items():
        for key, e in contrasts.items():
            value = "n/a" if e["synthetic"] is None or e["real"] is None else f"{e['synthetic']:.3g} / {e['real']:.3g}"
            reading = "same sign" if e["same_sign"] else "opposite sign" if e["same_sign"] is False else ""
            rows.append(("effect", f"tissue fraction {name} {key}: synthetic / real", value, reading))
    for name, stratum in section["strata"].items():
        if "flagged" in stratum:
            rows.append(("stratum", f"{name}: flagged copies, fidelity MAE", f"{stratum['flagged']}, {stratum['fidelity_mae']:.3g}",
                         f"{stratum['synthetic']} synthetic vs {stratum['real']} real samples"))
    return rows
