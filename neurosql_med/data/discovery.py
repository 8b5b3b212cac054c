"""Find the brain MRI scans in a folder, choose the ones a user means, and say why others were left out.

Public datasets ship several images per session (raw repeats, averages, masks,
segmentations), so a plain "every image" rule would train on duplicates; the folder's
layout (OASIS-1, BIDS/OASIS-3, or anything else) decides which image stands for a
session, and `--pattern` overrides that choice. Every chosen image is read once through
the training reader, so a scan that inspect lists is a scan that training can load.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import SegmentationStorage

from neurosql_med.config import check_labels
from neurosql_med.data import labels as lab
from neurosql_med.data.readers import ScanError, ScanSource, dicom_header, is_dicom_file, load_scan
from neurosql_med.errors import UserError

# Sidecars and documents that sit beside scans; never worth a "skipped" line.
_NOT_IMAGES = (
    ".json", ".tsv", ".csv", ".txt", ".md", ".rst", ".html", ".pdf", ".xml", ".yaml", ".yml", ".log",
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".svg", ".bval", ".bvec", ".py", ".sh", ".tsv.gz", ".zip",
)
_OASIS1_SESSION = re.compile(r"(OAS1_\d{4})_(MR\d+)")
_BIDS_SUBJECT = re.compile(r"sub-[A-Za-z0-9]+")
_BIDS_SESSION = re.compile(r"ses-[A-Za-z0-9]+")
_BIDS_T1W = re.compile(r"_T1w\.nii(\.gz)?")
_OASIS1_CHOSEN = ("PROCESSED", "MPRAGE", "T88_111")
_OASIS1_FOLDERS = {
    "RAW": "a single raw acquisition",
    "SUBJ_111": "the native-space average",
    "T88_111": "the atlas-registered image without brain mask",
    "FSL_SEG": "a tissue segmentation",
}
_OASIS1_WANTED = "not the atlas-registered brain-masked image (*_t88_masked_gfc)"
_BIDS_WANTED = "sub-*/[ses-*/]anat/*_T1w.nii[.gz]"
_DAMAGED_DICOM = "unreadable DICOM file (no image header: damaged, truncated or not DICOM)"


@dataclass
class Scan:
    """A usable scan, already read once, with what training will see of it."""

    id: str  # unique: "sub-OAS30001_ses-d0129", "OAS1_0001_MR1", or a file stem
    subject: str  # splits keep a subject's sessions together
    session: str | None
    path: Path  # NIfTI file, Analyze .hdr, or DICOM series folder
    format: str  # "nifti" | "analyze" | "dicom"
    files: list[Path]  # every file the scan is made of
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str  # axis codes of the affine, e.g. "RAS"
    intensity: tuple[float, float]  # min, max
    labels: Path | None = None  # its label map, when one was found (and fits, unless labels_problem says otherwise)
    label_files: list[Path] = field(default_factory=list)  # the label map's files, once it is known to fit
    labels_problem: str | None = None  # why it has no usable label map: "missing", or why the one found was rejected

    @property
    def source(self) -> ScanSource:
        """What LoadScand reads: the file, or the series' own files (its folder may hold other series)."""
        return _source(self.format, self.path, self.files)


@dataclass
class Skipped:
    path: Path
    reason: str
    unusable: bool = False  # a scan the run would have used, set aside as unreadable or invalid: what --strict refuses


@dataclass
class Discovery:
    root: Path
    layout: str
    scans: list[Scan]
    skipped: list[Skipped]
    labels_option: str = lab.AUTO  # what was asked: auto, none, or a glob
    labels_used: bool = False  # every scan has a label map that fits, and training will use them
    label_names: list[str] | None = None  # class index -> name when labels are used; 0 is background

    def to_json(self) -> dict:
        return {
            "layout": self.layout,
            "labels_used": self.labels_used,
            "label_names": self.label_names,
            "scans": [
                {
                    "id": s.id, "subject": s.subject, "session": s.session, "path": self.rel(s.path),
                    "format": s.format, "shape": list(s.shape), "spacing": list(s.spacing),
                    "labels": None if s.labels is None or s.labels_problem else self.rel(s.labels),
                    "labels_problem": s.labels_problem,
                }
                for s in self.scans
            ],
            "skipped": [{"path": self.rel(s.path), "reason": s.reason} for s in self.skipped],
        }

    def rel(self, path: Path) -> str:
        """Paths in reports are relative to the scan folder: they never say where the data lives."""
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else path.as_posix()


@dataclass
class _Volume:
    """One image found on disk, before the layout decides whether it is used."""

    path: Path
    format: str
    files: list[Path]
    folders: tuple[str, ...]  # the folder holding the files, as parts relative to the root
    dicom_name: str = ""  # generic id of a DICOM series: its folder, plus its description if the folder holds several
    problem: str | None = None  # known to be unusable before reading (unreadable DICOM header)


@dataclass
class _Name:
    id: str
    subject: str | None  # None: the scan is its own subject (generic layout)
    session: str | None
    fallback: str  # a more specific id, used when `id` is not unique


def discover(
    root: str | Path, pattern: str | None = None, strict: bool = False, labels: str = lab.AUTO,
) -> Discovery:
    """Scans under ``root`` sorted by id; with ``strict``, the first unusable chosen image is an error.

    ``labels`` pairs each scan with its label map: "auto" (the layout's naming; used when
    every scan has one that fits), "none", or a glob relative to each scan's folder.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"scan folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; pass the folder that holds the scans")
    check_labels(labels, "--labels")
    volumes, skipped = _find_volumes(root)
    detected = _layout(volumes)
    volumes, maps = _set_aside_label_maps(volumes, labels)
    layout = "pattern" if pattern is not None else detected
    chosen = _choose(root, volumes, layout, pattern, skipped)
    if pattern is not None and not chosen:
        raise UserError(f"--pattern {pattern!r} matches no image in {root}")
    scans, names, affines = [], [], []
    for vol in chosen:
        try:
            scan, affine = _describe(vol)
        except ScanError as exc:
            if strict:
                raise UserError(f"{exc.path}: {exc.reason}") from None
            skipped.append(Skipped(exc.path, exc.reason, unusable=True))
            continue
        scans.append(scan)
        names.append(_name(vol, detected))
        affines.append(affine)
    if not scans:
        raise UserError(f"no brain MRI scans found in {root} ({_why_none(skipped, layout)})")
    pairing = _LabelPairing(root, labels, strict)
    keep = pairing.pair(scans, affines, detected)
    skipped += pairing.skipped + pairing.unclaimed(maps)
    scans, names = [s for s, k in zip(scans, keep) if k], [n for n, k in zip(names, keep) if k]
    if not scans:
        raise UserError(f"no brain MRI scans found in {root} ({_why_none(skipped, layout)})")
    _apply_names(scans, names)
    return Discovery(root, layout, sorted(scans, key=lambda s: s.id), sorted(skipped, key=lambda s: s.path),
                     labels, pairing.used, pairing.names)


def _set_aside_label_maps(volumes: list[_Volume], option: str) -> tuple[list[_Volume], list[_Volume]]:
    """A segmentation is never a training scan: named like one (`_dseg`, `_fseg`, `_seg`) or matched by --labels."""
    globbed: set[Path] = set()
    if option not in (lab.AUTO, lab.NONE):
        for folder in sorted({v.path.parent for v in volumes}):
            globbed.update(lab.glob_matches(folder, option))
    is_map = [v.format != "dicom" and (lab.is_label_name(v.path.name) or v.path in globbed) for v in volumes]
    return [v for v, m in zip(volumes, is_map) if not m], [v for v, m in zip(volumes, is_map) if m]


class _LabelPairing:
    """Pairs scans with label maps and decides whether the cohort uses them (see `discover`)."""

    def __init__(self, root: Path, option: str, strict: bool) -> None:
        self.root, self.option, self.strict = root, option, strict
        self.used, self.names = False, None
        self.skipped: list[Skipped] = []
        self.claimed: set[Path] = set()
        self.fitting: dict[int, lab.LabelMap] = {}

    def pair(self, scans: list[Scan], affines: list[np.ndarray], layout: str) -> list[bool]:
        """Which scans stay; a scan whose label map is rejected (or missing, under a glob) is skipped."""
        if self.option == lab.NONE:
            return [True] * len(scans)
        for i, (scan, affine) in enumerate(zip(scans, affines)):
            self._find(i, scan, affine, layout)
        if self.option != lab.AUTO and not self.claimed:
            raise UserError(f"--labels {self.option!r} matches no label map beside any scan in {self.root}")
        if self.option == lab.AUTO and any(s.labels is None for s in scans):
            return [True] * len(scans)  # auto: a single scan without labels means no labels
        self.names = self._names()
        for i, m in list(self.fitting.items()):
            if m.names is None and m.top >= len(self.names):
                self._reject(scans[i], ScanError(m.path, f"holds class {m.top}, beyond the label names (0..{len(self.names) - 1})"))
        keep = [i in self.fitting for i in range(len(scans))]
        for scan, k in zip(scans, keep):
            if not k:
                self._skip(scan)
        self.used = any(keep)
        return keep

    def _find(self, i: int, scan: Scan, affine: np.ndarray, layout: str) -> None:
        found = lab.candidates(scan.path, scan.format, layout, self.option, self.root)
        self.claimed.update(found)
        if not found:
            where = self.root if self.option == lab.AUTO else scan.path.parent
            scan.labels_problem = "missing" if self.option == lab.AUTO else f"missing: no file matches --labels {self.option!r} in {where}"
            return
        if len(found) > 1:
            scan.labels_problem = f"several label maps ({', '.join(p.name for p in found)}); choose one with --labels GLOB"
            return
        scan.labels = found[0]
        try:
            self.fitting[i] = lab.check_label_map(found[0], scan.shape, affine, self.root)
            scan.label_files = self.fitting[i].files
        except ScanError as exc:
            self._reject(scan, exc)

    def _reject(self, scan: Scan, exc: ScanError) -> None:
        scan.labels_problem = f"rejected: {exc.reason}"
        scan.label_files = []
        self.fitting = {i: m for i, m in self.fitting.items() if m.path != exc.path}

    def _skip(self, scan: Scan) -> None:
        if self.strict:
            culprit = scan.labels if scan.labels is not None else scan.path
            raise UserError(f"{culprit}: label map {scan.labels_problem} (scan {scan.path.name})")
        self.skipped.append(Skipped(scan.path, f"label map {scan.labels_problem}", unusable=True))

    def _names(self) -> list[str]:
        """One naming for the cohort: the tables found must agree; without any, the classes are numbered."""
        tables = {tuple(m.names): m.names_from for m in self.fitting.values() if m.names is not None}
        if len(tables) > 1:
            (a, where_a), (b, where_b) = list(tables.items())[:2]
            raise UserError(f"label names differ: {where_a} names {', '.join(a)}; {where_b} names {', '.join(b)}")
        if tables:
            return list(next(iter(tables)))
        return lab.numbered_names(max((m.top for m in self.fitting.values()), default=0))

    def unclaimed(self, maps: list[_Volume]) -> list[Skipped]:
        why = "labels not used (--labels none)" if self.option == lab.NONE else "no scan pairs with it"
        return [Skipped(v.path, f"a label map, not a scan; {why}") for v in maps if v.path not in self.claimed]


def _why_none(skipped: list[Skipped], layout: str) -> str:
    if not skipped:
        return "no NIfTI, Analyze or DICOM files"
    first = "; ".join(f"{s.path.name}: {s.reason}" for s in sorted(skipped, key=lambda s: s.path)[:3])
    more = "; ..." if len(skipped) > 3 else ""
    hint = "" if layout == "pattern" else "; --pattern chooses images explicitly"
    return f"{len(skipped)} skipped: {first}{more}{hint}"


def _find_volumes(root: Path) -> tuple[list[_Volume], list[Skipped]]:
    """Every image on disk: NIfTI files, Analyze pairs, and DICOM series grouped by folder and UID."""
    volumes: list[_Volume] = []
    skipped: list[Skipped] = []
    analyze: dict[Path, list[Path]] = defaultdict(list)
    dicom: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    descriptions: dict[tuple[Path, str], str] = {}
    visited: set[str] = set()  # symlinked folders are followed (cohorts are often assembled that way), once each
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(folder, name)
            lower = name.lower()
            if lower.endswith((".nii", ".nii.gz")):
                volumes.append(_Volume(path, "nifti", [path], _parts(root, path.parent)))
            elif lower.endswith((".hdr", ".img")):
                analyze[path.with_suffix("")].append(path)
            elif lower.endswith(_NOT_IMAGES):
                continue
            elif is_dicom_file(path):
                try:
                    header = dicom_header(path)
                except ScanError as exc:
                    volumes.append(_Volume(path, "dicom", [path], _parts(root, path.parent), problem=exc.reason))
                    continue
                if header.get("SOPClassUID") == SegmentationStorage:
                    skipped.append(Skipped(path, "a DICOM segmentation (SEG) describes a scan; it is not one"))
                    continue
                if header.get("Rows") is None:
                    if _is_dicom_object(header):
                        skipped.append(Skipped(path, "DICOM file without image data (a DICOMDIR or a report)"))
                    else:  # a scan, damaged: --strict must stop on it
                        volumes.append(_Volume(path, "dicom", [path], _parts(root, path.parent), problem=_DAMAGED_DICOM))
                    continue
                key = (path.parent, str(header.get("SeriesInstanceUID", "")))
                dicom[key].append(path)
                descriptions[key] = str(header.get("SeriesDescription") or f"series{header.get('SeriesNumber', '')}")
            elif "." in name:
                skipped.append(Skipped(path, f"unsupported file type ({path.suffix}); convert it to NIfTI"))
    for pair in analyze.values():
        header_first = sorted(pair, key=lambda p: p.suffix.lower() != ".hdr")
        volumes.append(_Volume(header_first[0], "analyze", sorted(pair), _parts(root, pair[0].parent)))
    series_per_folder: dict[Path, int] = defaultdict(int)
    for folder, _ in dicom:
        series_per_folder[folder] += 1
    for (folder, uid), files in dicom.items():
        several = series_per_folder[folder] > 1
        name = f"{folder.name}_{descriptions[(folder, uid)]}" if several else folder.name
        volumes.append(_Volume(folder, "dicom", sorted(files), _parts(root, folder), dicom_name=name))
    return sorted(volumes, key=lambda v: (v.path, v.dicom_name)), skipped


def _is_dicom_object(header: pydicom.Dataset) -> bool:
    """A DICOMDIR or a report legitimately has no image; an image class without Rows is damaged.

    A file read with force=True that is not DICOM at all names no SOP class.
    """
    meta = getattr(header, "file_meta", None)
    sop = header.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return sop is not None and "Image Storage" not in pydicom.uid.UID(str(sop)).name


def _parts(root: Path, folder: Path) -> tuple[str, ...]:
    return folder.relative_to(root).parts


def _source(fmt: str, path: Path, files: list[Path]) -> ScanSource:
    return files if fmt == "dicom" else path


def _stem(name: str) -> str:
    for suffix in (".nii.gz", ".nii", ".hdr", ".img"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _layout(volumes: list[_Volume]) -> str:
    folders = {f for v in volumes for f in v.folders}
    if any(_OASIS1_SESSION.fullmatch(f) for f in folders):
        return "oasis1"
    if any(_BIDS_SUBJECT.fullmatch(f) for f in folders):
        return "bids"
    return "generic"


def _choose(root: Path, volumes: list[_Volume], layout: str, pattern: str | None, skipped: list[Skipped]) -> list[_Volume]:
    """The volumes the layout (or pattern) wants; the others are listed as skipped with its reason."""
    wanted = _glob_regex(pattern) if pattern is not None else None
    chosen = []
    for vol in volumes:
        if wanted is not None:
            why = None if _matches(root, vol, wanted) else f"does not match --pattern {pattern!r}"
        elif layout == "oasis1":
            why = _oasis1_reason(vol)
        elif layout == "bids":
            why = _bids_reason(vol)
        else:
            why = None
        if why is None:
            chosen.append(vol)
        else:
            skipped.append(Skipped(vol.path, why))
    return chosen


def _matches(root: Path, vol: _Volume, wanted: re.Pattern[str]) -> bool:
    """A pattern may name the `.hdr` or `.img` of a pair, a DICOM series' folder or its files."""
    return any(wanted.fullmatch(p.relative_to(root).as_posix()) for p in [vol.path, *vol.files])


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Shell globstar semantics: `**/` spans any folders, `*` and `?` stay within one name.

    Python 3.11's Path.match neither anchors at the root nor understands `**`.
    """
    out, i = [], 0
    pattern = pattern.removeprefix("./")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _oasis1_reason(vol: _Volume) -> str | None:
    """OASIS-1 sessions hold ~10 images; the atlas-registered, brain-masked one represents the session."""
    session = next((i for i, f in enumerate(vol.folders) if _OASIS1_SESSION.fullmatch(f)), None)
    if session is None:
        return "OASIS-1: outside the OAS1_xxxx_MRy session folders"
    inside = vol.folders[session + 1:]
    if vol.format == "analyze" and inside == _OASIS1_CHOSEN and _stem(vol.path.name).endswith("_t88_masked_gfc"):
        return None
    what = next((f"{_OASIS1_FOLDERS[f]} ({f}/)" for f in reversed(inside) if f in _OASIS1_FOLDERS), "another image")
    return f"OASIS-1: {what}, {_OASIS1_WANTED}"


def _bids_reason(vol: _Volume) -> str | None:
    subject = next((i for i, f in enumerate(vol.folders) if _BIDS_SUBJECT.fullmatch(f)), None)
    if subject is None:
        return f"BIDS: outside the subject folders (only {_BIDS_WANTED} are used)"
    if {"derivatives", "sourcedata"} & set(vol.folders[:subject]):
        return "BIDS: derived or source data (derivatives/, sourcedata/), not a raw scan"
    inside = vol.folders[subject + 1:]
    if inside and _BIDS_SESSION.fullmatch(inside[0]):
        inside = inside[1:]
    if inside != ("anat",) or vol.format != "nifti":
        return f"BIDS: not an anatomical NIfTI image (only {_BIDS_WANTED} are used)"
    if not _BIDS_T1W.search(vol.path.name):
        return f"BIDS: not a T1-weighted image (only {_BIDS_WANTED} are used)"
    return None


def _describe(vol: _Volume) -> tuple[Scan, np.ndarray]:
    """Read the image to validate it and record what training will see; ids are set later.

    The affine comes back too: its label map must sit on the same grid.
    """
    if vol.problem is not None:
        raise ScanError(vol.path, vol.problem)
    img = load_scan(_source(vol.format, vol.path, vol.files), vol.format)
    data, affine = img[0].numpy(), img.affine.numpy()
    return Scan(
        id="", subject="", session=None, path=vol.path, format=vol.format, files=vol.files,
        shape=(int(data.shape[0]), int(data.shape[1]), int(data.shape[2])),
        spacing=tuple(round(float(s), 6) for s in nib.affines.voxel_sizes(affine)),  # type: ignore[arg-type]
        orientation="".join(nib.aff2axcodes(affine)),
        intensity=(float(np.min(data)), float(np.max(data))),
    ), affine


def _name(vol: _Volume, layout: str) -> _Name:
    """Dataset naming where the image sits in a known layout (also under --pattern), else its file name."""
    stem = _stem(vol.path.name)
    if layout == "oasis1":
        session = next((m for f in vol.folders if (m := _OASIS1_SESSION.fullmatch(f))), None)
        if session is not None:
            return _Name(session.group(0), session.group(1), session.group(2), stem)
    if layout == "bids":
        at = next((i for i, f in enumerate(vol.folders) if _BIDS_SUBJECT.fullmatch(f)), None)
        if at is not None:
            subject = vol.folders[at]
            nxt = vol.folders[at + 1:at + 2]
            session = nxt[0] if nxt and _BIDS_SESSION.fullmatch(nxt[0]) else None
            base = f"{subject}_{session}" if session else subject
            return _Name(base, subject, session, stem.removesuffix("_T1w"))
    if vol.format == "dicom":  # the series' name already holds its folder
        return _Name(vol.dicom_name, None, None, "_".join((*vol.folders[:-1], vol.dicom_name)))
    return _Name(stem, None, None, "_".join((*vol.folders, stem)))


def _apply_names(scans: list[Scan], names: list[_Name]) -> None:
    """Ids must be unique: colliding ones take their longer form, then a numeric suffix."""
    counts: dict[str, int] = defaultdict(int)
    for n in names:
        counts[n.id] += 1
    ids = [_safe(n.fallback if counts[n.id] > 1 else n.id) for n in names]
    taken: dict[str, int] = defaultdict(int)
    for scan, name, wanted in zip(scans, names, ids):
        taken[wanted] += 1
        scan.id = wanted if taken[wanted] == 1 else f"{wanted}_{taken[wanted]}"
        scan.subject = name.subject or scan.id
        scan.session = name.session


def _safe(name: str) -> str:
    """Ids become file names of outputs; keep them to portable characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scan"
