"""Scans on disk → preprocessed tensors held in memory, with their geometry and fingerprint."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset

from neurosql_med.config import DataConfig
from neurosql_med.data.discovery import Discovery, Scan, discover
from neurosql_med.data.readers import MAX_SCAN_BYTES
from neurosql_med.data.transforms import preprocess
from neurosql_med.engine.conditioning import ConditionSpec
from neurosql_med.errors import UserError
from neurosql_med.io.files import sha256_file
from neurosql_med.io.geometry import Geometry


@dataclass
class Cohort:
    images: torch.Tensor          # (N, 1, *sample_shape) float32 in [0, 1]
    scan_ids: list[str]           # per sample: the scan it came from
    subjects: list[str]           # per sample: that scan's subject
    slice_index: list[int | None]  # per sample: slice within the volume grid (2d)
    geometry: Geometry
    discovery: Discovery
    labels: torch.Tensor | None = None  # (N, 1, *sample_shape) int64 class indices, voxel for voxel with images
    label_names: list[str] | None = None  # class index -> name; index 0 is background
    conditions: torch.Tensor | None = None  # (N, width) float32 encoded condition c of each sample (data/covariates.py)
    condition_spec: ConditionSpec | None = None  # the covariates behind ``conditions``
    condition_values: list[dict] | None = None  # per sample: its scan's parsed covariate values
    slice_levels: list[float] | None = None  # 2d, per sample: its relative level within its brain (data/transforms.py)

    def __len__(self) -> int:
        return self.images.shape[0]

    def fingerprint(self) -> dict:
        """Content hashes keyed by anonymous index: says what was trained on, never where or whom."""
        scans = [sorted(sha256_file(f) for f in scan.files) for scan in self.discovery.scans]
        found = {
            "n_scans": len(scans),
            "n_samples": len(self),
            "mode": self.geometry.mode,
            "scans": {str(i): hashes for i, hashes in enumerate(scans)},
        }
        if self.labels is not None:  # the same scans with other label maps are other training data
            maps = [sorted(sha256_file(f) for f in scan.label_files) for scan in self.discovery.scans]
            found["labels"] = {str(i): hashes for i, hashes in enumerate(maps)}
            found["label_names"] = self.label_names
        if self.conditions is not None:  # the same scans with other covariates are other training data
            found["conditions"] = hashlib.sha256(self.conditions.numpy().tobytes()).hexdigest()
        return found

    def subset(self, keep: np.ndarray) -> "Cohort":
        """The samples at ``keep`` (indices), e.g. one side of a by-subject split."""
        idx = [int(i) for i in keep]
        return Cohort(
            images=self.images[idx],
            scan_ids=[self.scan_ids[i] for i in idx],
            subjects=[self.subjects[i] for i in idx],
            slice_index=[self.slice_index[i] for i in idx],
            geometry=self.geometry,
            discovery=self.discovery,
            labels=None if self.labels is None else self.labels[idx],
            label_names=self.label_names,
            conditions=None if self.conditions is None else self.conditions[idx],
            condition_spec=self.condition_spec,
            condition_values=None if self.condition_values is None else [self.condition_values[i] for i in idx],
            slice_levels=None if self.slice_levels is None else [self.slice_levels[i] for i in idx],
        )


def scan_record(scan: Scan, labels: bool = False) -> dict:
    """The dictionary a MONAI pipeline starts from; with ``labels``, its label map under "label"."""
    record = {"image": scan.source, "format": scan.format, "id": scan.id, "subject": scan.subject}
    if labels:
        record.update(label=scan.labels, format_label="analyze" if scan.labels.suffix.lower() == ".hdr" else "nifti")
    return record


def check_resampling(scans: list[Scan], cfg: DataConfig) -> None:
    """Refuse a target spacing that would resample a scan past the per-scan memory limit.

    Resampling comes before cropping to ``data.shape``: a 256 mm scan at 0.01 mm would be
    25600 voxels a side. The voxel count is the scan's physical volume over the target
    voxel's, which does not depend on how the axes are ordered.
    """
    for scan in scans:
        voxels = math.prod(n * s for n, s in zip(scan.shape, scan.spacing)) / math.prod(cfg.spacing)
        if voxels * 4 > MAX_SCAN_BYTES:
            raise UserError(
                f"config key 'data.spacing' {cfg.spacing} would resample {scan.path} to about {voxels:,.0f} voxels; "
                f"one scan may hold at most {MAX_SCAN_BYTES // 4:,} (use a coarser spacing)"
            )


def _geometry(cfg: DataConfig, affines: list[torch.Tensor], slices: list[int | None]) -> Geometry:
    """One geometry for the cohort: the shared grid, centred where the brains sit on average."""
    stack = torch.stack([a.double() for a in affines])
    affine = stack[0].clone()
    affine[:3, 3] = stack[:, :3, 3].mean(dim=0)
    if cfg.mode == "3d":
        return Geometry("3d", list(cfg.shape), list(cfg.spacing), affine.tolist())
    centre = int(np.median([s for s in slices if s is not None]))
    return Geometry("2d", list(cfg.shape), list(cfg.spacing), affine.tolist(), cfg.slice_axis, centre)


def load_cohort(
    root: str | Path | Discovery,
    cfg: DataConfig,
    strict: bool = False,
    min_samples: int = 2,
    workers: int = 2,
) -> Cohort:
    """Discover, read and preprocess every scan once (MONAI CacheDataset), then stack them.

    Label maps come along when discovery found one that fits every scan and ``cfg.labels``
    is not "none"; they are preprocessed with their images and held as int64 class indices.
    """
    found = root if isinstance(root, Discovery) else discover(root, pattern=cfg.pattern, strict=strict, labels=cfg.labels)
    use_labels = found.labels_used and cfg.labels != "none"
    check_resampling(found.scans, cfg)
    records = [scan_record(s, use_labels) for s in found.scans]
    cached = CacheDataset(records, transform=preprocess(cfg, use_labels), num_workers=workers, progress=False)
    images, labels, scan_ids, subjects, slices, levels, affines = [], [], [], [], [], [], []
    for item in cached:
        samples = item if isinstance(item, list) else [item]
        for sample in samples:
            image = sample["image"]
            images.append(torch.as_tensor(image).float())
            if use_labels:
                labels.append(torch.as_tensor(sample["label"]).round().long())
            scan_ids.append(sample["id"])
            subjects.append(sample["subject"])
            slices.append(sample.get("slice_index"))
            levels.append(sample.get("slice_level"))
            affines.append(torch.as_tensor(sample["affine"] if "affine" in sample else image.affine))
    if len(images) < min_samples:
        raise UserError(
            f"{found.root}: {len(images)} training sample(s) after preprocessing; at least {min_samples} are needed"
        )
    return Cohort(
        images=torch.stack(images).as_subclass(torch.Tensor),  # plain tensors: geometry lives in Geometry
        scan_ids=scan_ids,
        subjects=subjects,
        slice_index=slices,
        geometry=_geometry(cfg, affines, slices),
        discovery=found,
        labels=torch.stack(labels).as_subclass(torch.Tensor) if use_labels else None,
        label_names=list(found.label_names) if use_labels and found.label_names else None,
        slice_levels=levels if cfg.mode == "2d" else None,
    )
