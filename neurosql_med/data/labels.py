"""Tissue label maps: which file segments which scan, whether it fits, and what its classes are called.

A label map is only useful if it matches its image voxel for voxel, so each one is read
and checked against the image it was found for (grid, position, integer classes) before
training sees it; a wrong pairing must not train silently. Layouts name the files
(OASIS-1 `FSL_SEG/*_fseg`, BIDS `*_dseg` beside the T1w or under `derivatives/`), so
pairing follows the same layout rules as choosing the scans.
"""
from __future__ import annotations

import csv
import glob
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurosql_med.config import LABEL_FILES
from neurosql_med.data.readers import ScanError, load_scan
from neurosql_med.errors import UserError

AUTO, NONE = "auto", "none"
FAST_NAMES = ["background", "CSF", "GM", "WM"]  # FSL FAST's three classes, as OASIS-1 ships them
AFFINE_TOLERANCE = 1e-3  # mm: label map and image must sit on the same grid
_LABEL_STEM = re.compile(r"_(dseg|fseg|pveseg|seg)$", re.IGNORECASE)
_BIDS_EXTRA = re.compile(r"(_desc-[A-Za-z0-9]+)?_dseg\.nii(\.gz)?")  # only desc- may be added to the T1w's entities
_BIDS_SUFFIX = re.compile(r"_[A-Za-z0-9]+$")


@dataclass
class LabelMap:
    """A label map that fits its scan."""

    path: Path
    format: str  # "nifti" | "analyze"
    files: list[Path]
    names: list[str] | None  # class index -> name, from dseg.tsv or the FAST default; None: numbered
    names_from: str  # where the names came from, for messages
    top: int  # the largest class index it holds


def label_stem(name: str) -> str:
    for suffix in LABEL_FILES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_label_name(name: str) -> bool:
    """Segmentations sit beside scans under the same extensions; their names give them away."""
    return bool(_LABEL_STEM.search(label_stem(name)))


def glob_matches(folder: Path, pattern: str) -> list[Path]:
    """The label files ``pattern`` names from ``folder``; an Analyze pair counts once, by its header."""
    found = sorted(Path(folder, m) for m in glob.glob(pattern, root_dir=folder, recursive=True))
    files = [p for p in found if p.is_file() and p.name.lower().endswith(LABEL_FILES)]
    return sorted({p.with_suffix(".hdr") if p.suffix.lower() == ".img" and p.with_suffix(".hdr").exists() else p
                   for p in files})


def candidates(image: Path, fmt: str, layout: str, option: str, root: Path) -> list[Path]:
    """Label maps that could belong to ``image``: by the layout's naming, or by the user's glob."""
    folder = image.parent
    stem = label_stem(image.name)
    if option != AUTO:
        return _by_prefix(glob_matches(folder, option), stem)
    if layout == "oasis1":
        return _oasis1(image, stem)
    if layout == "bids":
        return _bids(image, stem, root)
    if fmt == "dicom":
        return []
    return _existing([folder / f"{stem}_{kind}{ext}" for kind in ("dseg", "fseg", "seg") for ext in (".nii.gz", ".nii", ".hdr")])


def _by_prefix(found: list[Path], stem: str) -> list[Path]:
    """Several matches in one folder: the one named after the scan (`a.nii.gz` → `a_seg.nii.gz`); the others are other scans'."""
    if len(found) <= 1:
        return found
    keys = {stem, _BIDS_SUFFIX.sub("", stem)}
    return [p for p in found if any(re.match(re.escape(k) + r"[_.-]", p.name) for k in keys)]


def _existing(paths: list[Path]) -> list[Path]:
    return [p for p in paths if p.is_file()]


def _oasis1(image: Path, stem: str) -> list[Path]:
    """FAST's segmentation of the masked atlas image: SESSION/FSL_SEG/<image>_fseg.hdr."""
    session = next((p for p in image.parents if re.fullmatch(r"OAS1_\d{4}_MR\d+", p.name)), None)
    if session is None:
        return []
    return _existing([session / "FSL_SEG" / f"{stem}_fseg{ext}" for ext in (".hdr", ".nii.gz", ".nii")])


def _bids(image: Path, stem: str, root: Path) -> list[Path]:
    """`<entities>[_desc-X]_dseg.nii[.gz]` beside the T1w, else in one pipeline under derivatives/."""
    key = _BIDS_SUFFIX.sub("", stem)
    subject = next((p for p in image.parents if re.fullmatch(r"sub-[A-Za-z0-9]+", p.name)), None)
    if subject is None:
        return []
    inside = image.parent.relative_to(subject.parent)
    pipelines = sorted(p for p in (subject.parent / "derivatives").glob("*") if p.is_dir())
    for folder in [image.parent, *(p / inside for p in pipelines)]:
        found = sorted(p for p in folder.glob(f"{glob.escape(key)}_*dseg.nii*")
                       if _BIDS_EXTRA.fullmatch(p.name[len(key):]))
        if found:
            exact = [p for p in found if p.name.startswith(f"{key}_dseg.")]
            return exact or found
    return []


def check_label_map(path: Path, shape: tuple[int, ...], affine: np.ndarray, root: Path) -> LabelMap:
    """Read and check one label map against its image; a ScanError says why it does not fit."""
    fmt = "analyze" if path.suffix.lower() in (".hdr", ".img") else "nifti"
    try:
        img = load_scan(path, fmt)
    except ScanError as exc:
        raise ScanError(path, exc.reason) from None
    data = img[0].numpy()
    if tuple(data.shape) != tuple(shape):
        raise ScanError(path, f"shape {_dims(data.shape)}, its image is {_dims(shape)}")
    off = float(np.abs(img.affine.numpy() - affine).max())
    if off > AFFINE_TOLERANCE:
        raise ScanError(path, f"not on its image's grid (affines differ by up to {off:.3g} mm)")
    if (data < 0).any() or (data != np.round(data)).any():
        raise ScanError(path, "negative or non-integer values; it must hold class indices 0, 1, 2, ...")
    names, names_from = label_names(path, root)
    top = int(data.max())
    if names is not None and top >= len(names):
        raise ScanError(path, f"label map holds class {top}, but {names_from} names only 0..{len(names) - 1}")
    files = [path] if fmt == "nifti" else sorted([path, path.with_suffix(".img" if path.suffix == ".hdr" else ".IMG")])
    return LabelMap(path, fmt, files, names, names_from, top)


def _dims(shape) -> str:
    return "x".join(str(int(n)) for n in shape)


def label_names(path: Path, root: Path) -> tuple[list[str] | None, str]:
    """Class names from the nearest BIDS `dseg.tsv` (beside the file, up to the dataset root), else FAST's for `_fseg`."""
    stem = label_stem(path.name)
    for folder in [path.parent, *path.parent.parents]:
        for name in (f"{stem}.tsv", "dseg.tsv"):
            if (folder / name).is_file():
                return read_dseg_tsv(folder / name), str(folder / name)
        if folder == root or root not in folder.parents:
            break
    if stem.lower().endswith("_fseg"):
        return list(FAST_NAMES), "the FAST classes (background, CSF, GM, WM)"
    return None, "the values found"


def read_dseg_tsv(path: Path) -> list[str]:
    """BIDS `index`/`name` columns → names by index; an index the file skips is numbered, 0 is background."""
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: unreadable label table ({exc})") from None
    if not rows or not {"index", "name"} <= set(rows[0]):
        raise UserError(f"{path}: a dseg.tsv needs tab-separated columns 'index' and 'name' (BIDS)")
    named: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        index = (row.get("index") or "").strip()
        if not index.isdigit() or int(index) in named or not (row.get("name") or "").strip():
            raise UserError(f"{path}, line {line}: index must be a new integer >= 0 with a name, got {index!r}")
        named[int(index)] = row["name"].strip()
    named.setdefault(0, "background")
    return [named.get(i, f"label-{i}") for i in range(max(named) + 1)]


def numbered_names(top: int) -> list[str]:
    """Names for label maps that come without a table: their class indices."""
    return ["background", *(f"label-{i}" for i in range(1, top + 1))]
