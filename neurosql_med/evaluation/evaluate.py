"""`nsql-med evaluate`: one report on how real, varied and original a synthetic cohort is.

Real (and held-out) scans are preprocessed exactly as training saw them. The synthetic
images of an nsql-med model are read back at the model's own scale; images from any
other generator go through the real data's pipeline so both sides are compared alike.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict

import matplotlib.pyplot as plt
import numpy as np
import torch
from rich.table import Table
from torch import Tensor

from neurosql_med.config import Config, DataConfig, load_config
from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.data.covariates import load_conditioned_cohort
from neurosql_med.evaluation.conditions import condition_rows, condition_section, synthetic_conditions
from neurosql_med.data.transforms import is_foreground, preprocess_one
from neurosql_med.errors import UserError
from neurosql_med.io.card import write_evaluation
from neurosql_med.io.files import write_text
from neurosql_med.io.geometry import Geometry
from neurosql_med.evaluation.c2st import c2st_section
from neurosql_med.evaluation.options import CLASSIFIERS, EvaluateOptions
from neurosql_med.evaluation.slices import coherence_section, group_stacks, slice_mixing
from neurosql_med.evaluation.texture import spectrum_picture, texture
from neurosql_med.evaluation.labels import (
    EPOCHS, label_markdown, label_rows, label_section, read_label_names, tissue_picture,
)
from neurosql_med.metrics import (
    PSNR_CAP, TAU, audit, coverage, distribution, diversity, fidelity, pairwise_mae, ssim_window,
)
from neurosql_med.engine.model import NeuroSQLModel
from neurosql_med.io.model import load_model
from neurosql_med.io.outputs import check_output_path, output_lock, prepare_report_output
from neurosql_med.io.nifti import INTENSITY_MAX, read_affine, read_image
from neurosql_med.viz.plots import image_grid, save_figure

__all__ = ["TAU", "Report", "Scores", "audit", "evaluate", "report_table"]

NEAREST_SHOWN = 8
DISTANCE = "mean absolute pixel difference, images scaled to [0, 1]"
SLICE_AT = re.compile(r"^(?P<source>.*) \[(?:resampled, )?slice (?P<index>\d+)\]$")  # a 2D sample id's slice


class Scores(TypedDict):
    """The numbers of a report, each section as `metrics` returns it (plain Python, ready for JSON)."""

    counts: dict
    settings: dict
    fidelity: dict
    coverage: dict
    diversity: dict
    distribution: dict
    memorization: dict
    holdout: dict | None
    flagged: list[dict]
    labels: NotRequired[dict]  # only when the real scans and the synthetic images both have label maps
    conditions: NotRequired[dict]  # only for a conditional model's cohort: agreement and effect sizes
    c2st: NotRequired[dict]  # classifier two-sample test with its controls (see evaluation/c2st.py)
    mixing: NotRequired[dict]  # 2d: level spread of each sample's nearest real slices (see evaluation/slices.py)
    coherence: NotRequired[dict]  # stacks: adjacent-slice correlation and label continuity against real stacks
    texture: NotRequired[dict]  # high-frequency power and sharpness, synthetic over real


class Report(Scores):
    """report.json: which folders were compared, then the scores."""

    inputs: dict


def evaluate(options: EvaluateOptions, *, label_epochs: int = EPOCHS) -> Report:
    """Score the images in --synth against the training scans in --real; returns the report.

    With ``model`` the model's own config preprocesses the scans (``config`` is then
    not used) and the synthetic files have the model's sample shape or are stacks of its
    slices (others are resampled onto its grid); without it the
    synthetic folder is any set of images, preprocessed by ``config`` like the real ones.
    ``out`` receives report.json, report.md, nearest.png, distances.png and spectrum.png
    (and tissue.png with labels, mixing.png in 2d). The report's ``c2st`` section trains classifiers
    (see evaluation/c2st.py): ``c2st`` is "fast" (seconds), "strong" (the judge; minutes
    on a CPU) or "off" (left out). In 2d the report has a slice-mixing section, and where
    the synthetic files are stacks (or volumes) an inter-slice coherence section; both
    are read against real slices and stacks. When the real cohort and the synthetic images both have label maps (a
    ``_dseg`` beside each synthetic image), the report gains a ``labels`` section, its
    segmenter trained for ``label_epochs``. For a conditional model's cohort the report gains
    a ``conditions`` section; ``covariates`` is the table given to ``fit --covariates``, if any.
    """
    if options.out is None:
        return _evaluate(options, None, label_epochs)
    out = Path(options.out)
    inputs = [p for p in (options.real, options.synth, options.holdout, options.model) if p is not None]
    check_output_path(out, inputs=inputs)  # a mistyped --out fails before any scan is read
    with output_lock(out):
        prepare_report_output(out, inputs=inputs)
        return _evaluate(options, out, label_epochs)


@dataclass
class Sides:
    """The two cohorts an evaluation compares, read as the model (or the config) sees them."""

    model: NeuroSQLModel | None
    cfg: Config
    train: Cohort
    images: Tensor  # (N, 1, *sample_shape) synthetic samples
    ids: list[str]  # per synthetic sample: its file (and slice)
    labels: Tensor | None  # label maps of the samples at ``labelled``
    labelled: list[int]


def read_sides(
    real: str | Path, synth: str | Path, model_dir: str | Path | None = None, config: str | Path | None = None,
    covariates: str | Path | None = None,
) -> Sides:
    """The real scans and the synthetic folder, each preprocessed as `evaluate` compares them (see its docstring)."""
    model = load_model(model_dir) if model_dir is not None else None
    cfg = model.config if model is not None else load_config(config)
    conditional = model is not None and model.condition is not None
    train = load_conditioned_cohort(real, cfg, covariates=covariates) if conditional else load_cohort(real, cfg.data)
    if model is not None:
        images, ids = read_synthetic(Path(synth), model.geometry, cfg.data)
        labels, labelled = read_synthetic_labels(Path(synth), ids, model.geometry)
    else:
        images, ids, labels = _synthetic_cohort(Path(synth), cfg)
        labelled = list(range(len(images)))
    return Sides(model, cfg, train, images, ids, labels, labelled)


def realism_sections(sides: Sides, c2st: str = "fast") -> dict:
    """Texture, the C2ST (samples and, for the model's own training scans, reconstructions), slice mixing, coherence."""
    train, model = sides.train, sides.model
    sections: dict = {"texture": texture(train.images, sides.images)}
    if c2st != "off":
        own = model is not None and _trained_on(model.fingerprint, train)
        recon = model.sampled_reconstructions() if own else None
        decoded = model.reconstructions() if own and model.texture is not None else None
        sections["c2st"] = c2st_section(train.images, train.subjects, sides.images, reconstructions=recon,
                                        decoded=decoded, spec=CLASSIFIERS[c2st])
    labels = _per_sample(sides.labels, sides.labelled, len(sides.images))
    return sections | slice_sections(train, sides.images, sides.ids, labels, sides.cfg.data)


def _evaluate(options: EvaluateOptions, out: Path | None, label_epochs: int) -> Report:
    real, synth, model_dir, holdout, config, tau = (
        options.real, options.synth, options.model, options.holdout, options.config, options.tau)
    sides = read_sides(real, synth, model_dir, config, options.covariates)
    model, train, images, ids, labels, labelled = sides.model, sides.train, sides.images, sides.ids, sides.labels, sides.labelled
    held = load_cohort(holdout, sides.cfg.data) if holdout is not None else None
    inputs = {
        "real": str(real), "synthetic": str(synth), "holdout": None if holdout is None else str(holdout),
        "model": None if model_dir is None else str(model_dir), "config": None if model is not None else str(config or "default"),
    }
    report = Report(inputs=inputs, **score(
        train.images, sample_ids(train), images, ids, held=None if held is None else held.images, tau=tau,
    ))
    report.update(realism_sections(sides, options.c2st))
    if train.labels is not None and labels is not None:
        nearest = report["memorization"]["nearest"]
        report["labels"] = label_section(
            train, images[labelled], labels, [nearest[i] for i in labelled], held=held,
            names=read_label_names(Path(synth)), epochs=label_epochs,
        )
    if model is not None and model.condition is not None:
        report["conditions"] = condition_section(
            model.condition, train, images, labels if len(labelled) == len(images) else None,
            synthetic_conditions(Path(synth), ids, model.condition), tau)
    if out is not None:
        write_outputs(out, report, train.images, images)
    if model is not None:  # the model's EVALUATION.md, beside its card: the latest numbers travel with the model
        write_evaluation(model.folder, report, model.sha256)
    return report


def _per_sample(labels: Tensor | None, labelled: list[int], n: int) -> list[Tensor | None] | None:
    """Each sample's label map, None for the samples without one; None when no sample has one."""
    if labels is None:
        return None
    found: list[Tensor | None] = [None] * n
    for map_, i in zip(labels, labelled):
        found[i] = map_
    return found


def slice_place(sample_id: str) -> tuple[str, int] | None:
    """The source file and slice index of a 2D sample cut from a volume (see `sample_ids`, `read_synthetic`)."""
    match = SLICE_AT.match(sample_id)
    return None if match is None else (match["source"], int(match["index"]))


def slice_sections(
    train: Cohort, images: Tensor, ids: list[str], labels: Sequence[Tensor | None] | None, data: DataConfig,
) -> dict:
    """Slice mixing (2d) and inter-slice coherence, each where its inputs exist.

    In 2d the real stacks are each scan's slices and the synthetic ones the files holding
    several slices (a synthetic subject written as a stack); in 3d every volume is a stack
    along the configured slice axis.
    """
    sections = {}
    real_labels = None if train.labels is None else list(train.labels)
    if data.mode == "2d":
        mixing = slice_mixing(train.images, train.slice_levels, train.subjects, images)
        if mixing is not None:
            sections["mixing"] = mixing
        subject_of = dict(zip(train.scan_ids, train.subjects))
        real, scans, real_stack_labels = group_stacks(train.images, list(zip(train.scan_ids, train.slice_index)), real_labels)
        synth, _, synth_labels = group_stacks(images, [slice_place(i) for i in ids], labels)
        coherence = coherence_section(real, [subject_of[s] for s in scans], synth,
                                      real_labels=real_stack_labels, synth_labels=synth_labels)
    else:
        synth_labels = None if labels is None or any(m is None for m in labels) else list(labels)
        coherence = coherence_section(list(train.images), train.subjects, list(images), real_labels=real_labels,
                                      synth_labels=synth_labels, axis=data.slice_axis)
    if coherence is not None:
        sections["coherence"] = coherence
    return sections


def _trained_on(fingerprint: dict, cohort: Cohort) -> bool:
    """Whether ``cohort``'s images are, sample for sample, the ones the model was fitted to (label maps aside)."""
    mine = cohort.fingerprint()
    return all(fingerprint.get(key) == mine[key] for key in ("n_scans", "n_samples", "mode", "scans"))


def read_synthetic(folder: Path, geometry: Geometry, data: DataConfig) -> tuple[Tensor, list[str]]:
    """Every NIfTI under ``folder`` (hidden files and folders left out) as samples of the model, with their names.

    A file on the model's grid is read at the model's own scale. Any other image (a raw
    copy of a training scan dropped into the folder, say) goes through the model's own
    preprocessing, i.e. is resampled through its affine onto the training grid, so it is
    audited like any sample instead of refused.
    """
    if not folder.is_dir():
        raise UserError(f"synthetic folder not found: {folder}")
    files = [p for p in _nifti_files(folder) if not _is_label_map(p)]
    if not files:
        raise UserError(f"no synthetic images (*.nii, *.nii.gz) found in {folder}")
    images, ids = [], []
    for path in files:
        name = path.relative_to(folder).as_posix()
        for sample, where in _read_one(path, geometry, data):
            images.append(torch.from_numpy(sample))
            ids.append(name if where is None else f"{name} [{where}]")
    _require_two(len(images), folder)
    return torch.stack(images)[:, None], ids


def _nifti_files(folder: Path) -> list[Path]:
    """Every NIfTI under ``folder``, hidden files and folders (a trash can, a half-written temp file) left out."""
    return sorted(
        p for p in folder.rglob("*")
        if p.name.endswith((".nii", ".nii.gz")) and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _read_one(path: Path, geometry: Geometry, data: DataConfig) -> list[tuple[np.ndarray, str | None]]:
    """The samples in one file: itself when on the model's grid, its brain slices when a stack of the
    model's slices (a synthetic subject), else what preprocessing makes of it."""
    image = read_image(path)
    if list(image.shape) == list(geometry.as_volume(np.zeros(geometry.sample_shape)).shape) and _same_affine(path, geometry):
        sample = image / INTENSITY_MAX
        return [(sample.reshape(geometry.sample_shape), None)]
    if _is_stack(path, image.shape, geometry):
        slices = np.moveaxis(image / INTENSITY_MAX, geometry.slice_axis, 0).astype(np.float32)
        found = [(s, f"slice {k}") for k, s in enumerate(slices) if is_foreground(torch.from_numpy(s)).any()]
        if not found:
            raise UserError(f"{path}: blank image (no slice of the stack holds brain)")
        return found
    record = {"image": path, "format": "nifti", "id": path.name, "subject": path.name}
    samples = preprocess_one(data, record)
    if not samples:
        raise UserError(f"{path}: no brain found after resampling it onto the model's grid")
    return [(np.asarray(s["image"][0], dtype=np.float32), _resampled_where(s)) for s in samples]


def _is_stack(path: Path, shape: tuple[int, ...], geometry: Geometry) -> bool:
    """Whether a 2d model's file is a stack of its slices: several of them, same in-plane grid, voxel size and axes,
    slices along the slice axis at any spacing (a model with subject codes writes them data.slice_stride apart)."""
    axis = geometry.slice_axis
    if geometry.mode != "2d" or len(shape) != 3 or shape[axis] < 2:
        return False
    in_plane = [i for i in range(3) if i != axis]
    affine, grid = read_affine(path)[:3, :3], np.asarray(geometry.affine)[:3, :3]
    along = np.allclose(np.cross(affine[:, axis], grid[:, axis]), 0, atol=1e-3) and affine[:, axis] @ grid[:, axis] > 0
    return [shape[i] for i in in_plane] == geometry.sample_shape and bool(
        along and np.allclose(affine[:, in_plane], grid[:, in_plane], atol=1e-3))


def _same_affine(path: Path, geometry: Geometry) -> bool:
    return bool(np.allclose(read_affine(path), geometry.sample_affine(), atol=1e-3))


def _resampled_where(sample: dict) -> str:
    index = sample.get("slice_index")
    return "resampled" if index is None else f"resampled, slice {index}"


def _as_sample(data: np.ndarray, geometry: Geometry) -> np.ndarray:
    if geometry.mode == "2d" and data.ndim == 3 and data.shape[geometry.slice_axis] == 1:
        return np.squeeze(data, axis=geometry.slice_axis)
    return data


def _is_label_map(path: Path) -> bool:
    """A BIDS segmentation (``*_dseg.nii[.gz]``): it describes an image, it is not one."""
    return path.name.endswith(("_dseg.nii", "_dseg.nii.gz"))


def label_map_path(image: Path) -> Path:
    """The ``_dseg`` sibling of a synthetic image (``…_T1w.nii.gz`` → ``…_dseg.nii.gz``; ``.nii`` if that is what exists)."""
    stem = image.name.removesuffix(".gz").removesuffix(".nii").removesuffix("_T1w")
    plain = image.with_name(f"{stem}_dseg.nii")
    return plain if plain.is_file() else image.with_name(f"{stem}_dseg.nii.gz")


def read_synthetic_labels(folder: Path, ids: list[str], geometry: Geometry) -> tuple[Tensor | None, list[int]]:
    """The label map beside every synthetic image, as class indices, and which samples they belong to.

    None when the folder has no label map at all. Images resampled from foreign files have
    none; a slice of a stack has its stack's label map's slice.

    A cohort with label maps must have one per image, voxel for voxel: a missing or
    misshapen one would silently drop or misalign samples from the label scores.
    """
    if not any(_is_label_map(p) for p in _nifti_files(folder)):
        return None, []
    maps, labelled, read = [], [], {}
    for i, name in enumerate(ids):
        if "[resampled" in name:  # resampled from a foreign image (see read_synthetic): no label map of ours
            continue
        labelled.append(i)
        file, index = slice_place(name) or (name, None)
        path = label_map_path(folder / file)
        if not path.is_file():
            raise UserError(f"{folder / file}: no label map beside it (expected {path.name}), while the folder has label maps for other images")
        if path not in read:
            read[path] = read_image(path)
        whole = read[path]
        if index is not None and not (whole.ndim == 3 and index < whole.shape[geometry.slice_axis]):
            raise UserError(f"{path}: label map shape {tuple(whole.shape)} has no slice {index} along axis {geometry.slice_axis}, "
                            "which its image has")
        data = _as_sample(whole, geometry) if index is None else np.take(whole, index, axis=geometry.slice_axis)
        if list(data.shape) != geometry.sample_shape:
            raise UserError(f"{path}: label map shape {tuple(data.shape)} does not match its image's "
                            f"{tuple(geometry.sample_shape)}")
        maps.append(torch.from_numpy(np.rint(data).astype(np.int64)))
    return torch.stack(maps)[:, None], labelled


def _synthetic_cohort(folder: Path, cfg: Config) -> tuple[Tensor, list[str], Tensor | None]:
    cohort = load_cohort(folder, cfg.data, min_samples=1)
    _require_two(len(cohort), folder)
    return cohort.images, sample_ids(cohort), cohort.labels


def _require_two(count: int, folder: Path) -> None:
    """Diversity and the distribution metrics compare pairs within the synthetic set."""
    if count < 2:
        raise UserError(f"{folder}: {count} synthetic image; evaluation needs at least 2")


def sample_ids(cohort: Cohort) -> list[str]:
    """Each sample as the file it came from (relative to the folder), plus its slice in 2d."""
    paths = {s.id: s.path.relative_to(cohort.discovery.root).as_posix() for s in cohort.discovery.scans}
    return [paths[scan] if k is None else f"{paths[scan]} [slice {k}]" for scan, k in zip(cohort.scan_ids, cohort.slice_index)]


def score(
    real: Tensor, real_ids: list[str], synth: Tensor, ids: list[str], *, held: Tensor | None = None, tau: float = TAU,
) -> Scores:
    """The report's numbers; ``real_ids`` and ``ids`` name the samples in the flagged list.

    The two all-pairs distance matrices (synthetic x training, training x training) are
    the bulk of the time, so each is computed once and shared by fidelity, coverage and
    the memorization audit.
    """
    d_sr, d_rr = pairwise_mae(synth, real), pairwise_mae(real)
    memo = audit(real, synth, tau, d_st=d_sr, d_tt=d_rr)
    div = diversity(synth, real)
    dist = distribution(real, synth)
    return Scores(
        counts={"real": len(real), "synthetic": len(synth), "holdout": None if held is None else len(held)},
        settings={
            "tau": tau,
            "distance": DISTANCE,
            "feature_extractor": dist.pop("feature_extractor"),
            "k": dist.pop("k"),
            "diversity_pairs": {"synthetic": div.pop("pairs_synthetic"), "real": div.pop("pairs_real")},
            "ms_ssim": {"scales": div.pop("ms_ssim_scales"), "window": div.pop("ms_ssim_window")},
            "ssim_window": ssim_window(tuple(real.shape[2:])),
            "psnr_cap_db": PSNR_CAP,
            "mode": f"{real.ndim - 2}d",
            "sample_shape": list(real.shape[2:]),
        },
        fidelity=fidelity(synth, real, d_sr),
        coverage=coverage(real, synth, d_sr, d_rr),
        diversity=div,
        distribution=dist,
        memorization=memo,
        holdout=None if held is None else _versus(held, synth),
        flagged=[
            {"id": ids[i], "ratio": memo["ratios"][i], "nearest_real": real_ids[memo["nearest"][i]]}
            for i in memo["flagged"]
        ],
    )


def _versus(reference: Tensor, synth: Tensor) -> dict:
    """Fidelity and coverage against images the model never saw: a generalisation check."""
    d = pairwise_mae(synth, reference)
    return {"fidelity": fidelity(synth, reference, d), "coverage": coverage(reference, synth, d)}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def value_at(record: Mapping, key: str) -> float | None:
    """The number at a dotted key such as ``fidelity.mae``; None where the record has no such value."""
    value: object = record
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return None if value is None else float(value)  # type: ignore[arg-type]


def _section(name: str, *rows: tuple[str, str, str]) -> tuple[tuple[str, str, str, str], ...]:
    """Rows shown as one formatted number: (section, metric, dotted key into the report, how to read it) from
    each (metric, key within the section, how to read it)."""
    return tuple((name, metric, f"{name}.{key}", reading) for metric, key, reading in rows)


SCORE_ROWS = (
    *_section("fidelity", ("MAE to nearest real", "mae", "lower: closer to real"),
              ("SSIM to nearest real", "ssim", "higher: closer (1 = same)"), ("PSNR to nearest real (dB)", "psnr", "higher: closer")),
    *_section("coverage", ("MAE real → nearest synthetic", "mae", "lower: real anatomy reached"),
              ("real samples covered", "covered", "fraction; higher is better")),
    *_section("diversity", ("MS-SSIM within synthetic", "ms_ssim_synthetic", "1: all alike"),
              ("MS-SSIM within real", "ms_ssim_real", "the real variety"),
              ("ratio synthetic / real", "ratio", "≈1 kept; >1 less varied")),
    *_section("distribution", ("MMD²", "mmd2", "≈0: same distribution"), ("precision", "precision", "realism, 0..1"),
              ("recall", "recall", "variety, 0..1"), ("density", "density", "≈1 matching"), ("coverage", "coverage", "0..1")),
)
RATIO_ROWS = _section("memorization", ("smallest ratio", "ratio_min", "d_syn / median d_train"),
                      ("median ratio", "ratio_median", "≈1 or more: new images"))
HOLDOUT_ROWS = _section(
    "holdout", ("MAE to nearest held-out", "fidelity.mae", "compare with fidelity"),
    ("SSIM to nearest held-out", "fidelity.ssim", ""), ("PSNR to nearest held-out (dB)", "fidelity.psnr", ""),
    ("MAE held-out → nearest synthetic", "coverage.mae", ""), ("held-out samples covered", "coverage.covered", ""),
)


def _rows(report: Report) -> list[tuple[str, str, str, str]]:
    """(section, metric, value, how to read it): the rows both the terminal and report.md show."""
    m = report["memorization"]
    shares = [
        ("memorization", "flagged as copies", f"{m['n_flagged']} ({m['fraction_flagged']:.1%})", f"ratio < τ = {m['tau']}"),
        ("memorization", "training samples below τ", f"{m['train_fraction_below_tau']:.1%}", "the share new samples may show"),
    ]
    rows = _numbers(report, SCORE_ROWS) + shares + _numbers(report, RATIO_ROWS)
    rows += _numbers(report, HOLDOUT_ROWS) if report["holdout"] is not None else []
    rows += condition_rows(report["conditions"]) if "conditions" in report else []
    rows += realism_rows(report) + anatomy_rows(report)
    return rows + label_rows(report["labels"]) if "labels" in report else rows


def _auc(test: dict | None) -> str:
    """Mean ± sd over the classifier's seeds, and their range: one classifier run can swing by 0.15."""
    if test is None:
        return "n/a (fewer than 2 subjects a side)"
    low, high = test["auc_range"]
    return f"{test['auc']:.3f} ± {test['auc_std']:.2g} ({low:.2f}–{high:.2f})"


def realism_rows(report: Scores) -> list[tuple[str, str, str, str]]:
    """The texture ratios and, when run, the C2ST with its two controls (read the AUC only if they pass)."""
    rows = [
        ("texture", "high-frequency power ratio", _fmt(value_at(report, "texture.high_frequency_ratio")),
         f"synthetic / real above {report['texture']['cutoff']:g} cycles/px; <1 blurred, >1 noisy"),
        ("texture", "gradient magnitude ratio", _fmt(value_at(report, "texture.gradient_ratio")), "synthetic / real; <1 soft edges"),
    ] if "texture" in report else []
    if "c2st" not in report:
        return rows
    c, controls = report["c2st"], report["c2st"]["controls"]
    accuracy = "n/a" if c["synthetic"] is None else f"{c['synthetic']['accuracy']:.3f}"
    verdict = {True: "passed", False: "FAILED: the C2ST says nothing", None: "not run (too few subjects)"}[controls["passed"]]
    seeds = f"{c['settings']['name']} classifier, mean ± sd (range) of {c['settings']['repeats']} seeds"
    rows += [
        ("c2st", "AUC synthetic vs real", _auc(c["synthetic"]), f"0.5: indistinguishable; 1: always told apart ({seeds})"),
        ("c2st", "balanced accuracy", accuracy, "0.5: chance"),
    ]
    recon = "n/a (needs --model and its own training scans as --real)" if c["reconstruction"] is None else _auc(c["reconstruction"])
    rows.append(("c2st", "AUC reconstructions vs real", recon, "G(u_σ(i)) vs x_i: the decoder's share"))
    if c.get("reconstruction_decoder") is not None:
        rows.append(("c2st", "AUC reconstructions without texture", _auc(c["reconstruction_decoder"]),
                     "G(u_σ(i)) alone vs x_i: what the residual texture hides"))
    return rows + [
        ("c2st", "control: real vs real", _auc(controls["real_vs_real"]), f"two halves by subject; must be ≤ {controls['null_max']}"),
        ("c2st", f"control: real vs blurred σ={controls['blur_sigma']:g} px", _auc(controls["blur"]), f"must be ≥ {controls['blur_min']}"),
        ("c2st", "controls", verdict, ""),
    ]


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def anatomy_rows(report: Scores) -> list[tuple[str, str, str, str]]:
    """Slice mixing and inter-slice coherence, each ratio beside its real-vs-real control."""
    rows = []
    if "mixing" in report:
        m = report["mixing"]
        for key, where in (("median", "median sample"), ("p90", "worst tenth (90th percentile)")):
            rows.append(("mixing", f"level spread of {m['k']} nearest real, {where}", _ratio(m["ratio"][key]),
                         f"synthetic / held-out real ({m['synthetic'][key]:.3f} vs {m['real'][key]:.3f}); "
                         f"real vs real {_ratio(m['control']['ratio'][key])}; >1: levels mixed"))
    if "coherence" in report:
        c = report["coherence"]
        control = c["control"]["ratio"] if c["control"] is not None else {}
        for key, what in (("correlation", "adjacent-slice correlation"), ("label_dice", "adjacent label-slice Dice"),
                          ("margin", "identity margin: next slice of the same stack vs of another")):
            if key in c["ratio"]:
                rows.append(("coherence", what, _ratio(c["ratio"][key]),
                             f"synthetic / real stacks ({c['synthetic'][key]:.3f} vs {c['real'][key]:.3f}, "
                             f"{c['synthetic']['stacks']} vs {c['real']['stacks']} stacks); real vs real {_ratio(control.get(key))}"))
    return rows


def _numbers(report: Report, specs: tuple[tuple[str, str, str, str], ...]) -> list[tuple[str, str, str, str]]:
    return [(section, metric, _fmt(value_at(report, key)), reading) for section, metric, key, reading in specs]


def report_table(report: Report) -> Table:
    counts = report["counts"]
    held = f", {counts['holdout']} held-out" if counts["holdout"] is not None else ""
    table = Table(title=f"{counts['synthetic']} synthetic vs {counts['real']} real samples{held}")
    for column in ("section", "metric", "value", "reading"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in _rows(report):
        table.add_row(*row)
    return table


def report_markdown(report: Report) -> str:
    s, counts = report["settings"], report["counts"]
    lines = [
        "# nsql-med evaluation",
        "",
        f"{counts['synthetic']} synthetic vs {counts['real']} real samples"
        + (f" and {counts['holdout']} held-out" if counts["holdout"] is not None else "")
        + f" ({s['mode']}, shape {' x '.join(map(str, s['sample_shape']))}). Distance: {s['distance']}.",
        "",
        "| section | metric | value | reading |",
        "|---|---|---:|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(report)),
        "",
        "## Suspected copies",
        "",
    ]
    if report["flagged"]:
        lines += ["| synthetic sample | ratio | nearest real sample |", "|---|---:|---|"]
        lines += [f"| {f['id']} | {f['ratio']:.3f} | {f['nearest_real']} |" for f in report["flagged"]]
    else:
        lines.append(f"None: no synthetic sample is closer than τ = {s['tau']} x the median training nearest-neighbour distance.")
    lines += [
        "",
        "## Settings",
        "",
        f"- τ = {s['tau']}; median training nearest-neighbour MAE {report['memorization']['median_d_train']:.4g}",
        f"- features: {s['feature_extractor']}, k = {s['k']}",
        f"- MS-SSIM: {s['ms_ssim']['scales']} scales, window {s['ms_ssim']['window']}; pairs: "
        f"{s['diversity_pairs']['synthetic']} synthetic, {s['diversity_pairs']['real']} real",
        f"- SSIM window {s['ssim_window']}; PSNR capped at {s['psnr_cap_db']:g} dB",
        *_c2st_settings(report),
        "",
    ]
    return "\n".join(lines + (label_markdown(report["labels"]) if "labels" in report else []))


def _c2st_settings(report: Report) -> list[str]:
    if "c2st" not in report:
        return []
    c = report["c2st"]["settings"]
    return [f"- C2ST ({c['classifier']}); {c['folds']}-fold cross-validation grouped by {c['grouped_by']}, "
            f"{c['repeats']} seeds (AUC mean ± sd), at most {c['max_per_side']} images a side; "
            f"accuracy {c['accuracy']}; {c['quantised']}"]


def write_outputs(out: Path, report: Report, real: Tensor, synth: Tensor) -> None:
    write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=False))
    write_text(out / "report.md", report_markdown(report))
    nearest_picture(out / "nearest.png", report["memorization"], real, synth)
    distance_histogram(out / "distances.png", report["memorization"])
    spectrum_picture(out / "spectrum.png", report["texture"])
    if "mixing" in report:
        mixing_picture(out / "mixing.png", report["mixing"], real, synth)
    if "labels" in report:
        tissue_picture(out / "tissue.png", report["labels"])


def nearest_picture(path: Path, memo: dict, real: Tensor, synth: Tensor) -> None:
    """The synthetic samples closest to a training sample (flagged ones come first) above that sample."""
    shown = torch.argsort(torch.tensor(memo["ratios"]))[:NEAREST_SHOWN].tolist()
    flags = [memo["ratios"][i] < memo["tau"] for i in shown]
    rows = [("synthetic", synth[shown]), ("nearest real", real[[memo["nearest"][i] for i in shown]])]
    title = f"synthetic samples closest to a training sample (red: ratio < τ = {memo['tau']}, a suspected copy)"
    image_grid(rows, path, title=title, marked=[flags, flags])


def mixing_picture(path: Path, mixing: dict, real: Tensor, synth: Tensor) -> None:
    """The most level-mixed samples above their nearest real slices: a blend of two levels shows as unlike neighbours."""
    worst = mixing["most_mixed"]
    rows = [("synthetic", synth[[w["sample"] for w in worst]])]
    rows += [(f"nearest real {r + 1}", real[[w["nearest_real"][r] for w in worst]]) for r in range(mixing["k"])]
    spreads = ", ".join(f"{w['spread']:.2f}" for w in worst)
    image_grid(rows, path, title=f"samples whose {mixing['k']} nearest real slices lie furthest apart in level "
                                 f"(sd of level: {spreads})")


def distance_histogram(path: Path, memo: dict) -> None:
    """Where synthetic samples sit relative to the training set's own nearest-neighbour spacing."""
    ratios, train = np.asarray(memo["ratios"]), np.asarray(memo["train_ratios"])
    bins = np.linspace(0, max(ratios.max(), train.max(), memo["tau"]) * 1.05, 40)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(train, bins=bins, alpha=0.6, density=True, label="training: nearest other training sample")
    ax.hist(ratios, bins=bins, alpha=0.6, density=True, label="synthetic: nearest training sample")
    ax.axvline(memo["tau"], color="red", linestyle="--", label=f"τ = {memo['tau']} (below: suspected copy)")
    ax.set_xlabel("MAE / median training nearest-neighbour MAE")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(f"memorization audit: {memo['n_flagged']} of {len(ratios)} flagged")
    fig.tight_layout()
    save_figure(fig, path)
