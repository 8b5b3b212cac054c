"""Read one scan into a channel-first MONAI MetaTensor, identically for inspect and training.

The reader is always chosen from the scan's format, never from its file name: MONAI's
automatic choice hands a `.hdr` to PydicomReader (which claims every suffix) and fails.
Every way a file can be unusable becomes a `ScanError` carrying a one-line reason, so
discovery can list the scan as skipped and training stops with a message naming the file.
"""
from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import re
import warnings
import zlib
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader, PydicomReader
from monai.transforms import LoadImage, MapTransform
from nibabel.filebasedimages import ImageFileError

from neurosql_med.errors import UserError

FORMATS = ("nifti", "analyze", "dicom")
ONE_VOLUME = "nsql-med needs one 3D volume per scan"
# One scan's voxels as float32, as training holds them: 134 million voxels (e.g. 512^3).
# Checked against the header before any voxel is read; a 2 MB .nii.gz of zeros that
# declared 600^3 voxels used to take 2.7 GB of memory.
MAX_SCAN_BYTES = 512 * 2**20

# A NIfTI or Analyze file, or a DICOM series given as its folder or as the list of its files.
ScanSource = str | Path | Sequence[str | Path]

_ANALYZE_PARTNER = {".hdr": ".img", ".img": ".hdr", ".HDR": ".IMG", ".IMG": ".HDR"}


def _loader() -> LoadImage:
    """LoadImage with MONAI's default readers registered quietly.

    The constructor instantiates every default reader, and without nvImageCodec the DICOM
    one logs and warns about a decoder fallback on each start: noise for a CPU user. The
    reader given here is a placeholder; every call passes its reader, which also lets the
    reader's own exception through instead of a generic "cannot find a suitable reader".
    """
    with _quiet_log("monai.data.nvimgcodec_pydicom_plugin"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
        return LoadImage(image_only=True, ensure_channel_first=True, reader=NibabelReader())


@contextlib.contextmanager
def _quiet_log(name: str) -> Iterator[None]:
    """Hold back a library's log lines below ERROR; our own reason replaces them."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


_LOAD = _loader()


class ScanError(UserError):
    """An unusable scan; keeps the bare reason so discovery can list it as skipped."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # survives worker processes
        return type(self), (self.path, self.reason)


class LoadScand(MapTransform):
    """Replace ``d[key]`` (a scan path, or a DICOM series' files) by its (1, X, Y, Z) MetaTensor.

    The format comes from ``d[format_key]`` because neither a DICOM file without suffix
    nor an Analyze `.img` says what it is by its name.
    """

    def __init__(self, keys: KeysCollection, format_key: str = "format", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.format_key = format_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_scan(d[key], d[self.format_key])
        return d


def read_scan(source: ScanSource, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """The (X, Y, Z) float32 voxels and 4x4 affine, through the same path training uses."""
    img = load_scan(source, fmt)
    return img[0].numpy(), img.affine.numpy()


def load_scan(source: ScanSource, fmt: str) -> MetaTensor:
    """One validated 3D volume: (1, X, Y, Z) float32 with `.affine` (RAS) and `.meta`."""
    if fmt in ("nifti", "analyze"):
        where = Path(source)  # type: ignore[arg-type]
        files = _analyze_files(where) if fmt == "analyze" else [where]
        target: str = str(where)
        reader: NibabelReader | PydicomReader = NibabelReader()
    elif fmt == "dicom":
        where, files = _dicom_series(source)
        target, reader = str(files[0].parent), PydicomReader(fname_regex=_exact_files_regex(files))
    else:
        raise UserError(f"unknown scan format {fmt!r} for {source}; expected one of {', '.join(FORMATS)}")
    _check_files(files)
    if fmt != "dicom":
        _check_header(where)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to infinity is reported below, once
            img = _LOAD(target, reader=reader)
    except Exception as exc:  # any failure inside a third-party reader means: this file is unusable
        raise ScanError(where, _reason(exc)) from exc
    _check_volume(where, img, fmt)
    return img


def _check_header(where: Path) -> None:
    """Refuse what a NIfTI/Analyze header already tells, before a voxel is read.

    The header is judged as stored: nibabel's loader silently "fixes" a zero voxel size
    to 1 mm (with a warning on stderr), which would give the scan a made-up geometry.
    """
    try:
        with _quiet_log("nibabel.global"):
            img = nib.load(where)
        with (img.file_map.get("header") or img.file_map["image"]).get_prepare_fileobj("rb") as fh:
            raw = type(img.header).from_fileobj(fh, check=False)
        shape, dtype, zooms = raw.get_data_shape(), raw.get_data_dtype(), raw.get_zooms()[:3]
    except Exception as exc:  # nibabel raises many types on damaged headers
        raise ScanError(where, _reason(exc)) from exc
    if dtype.kind == "c":
        raise ScanError(where, "complex-valued voxels; nsql-med needs real intensities (save the magnitude image)")
    if dtype.kind not in "biuf":
        raise ScanError(where, f"unsupported voxel type {dtype} (RGB or structured data)")
    if any(not math.isfinite(z) or z == 0 for z in zooms):
        sizes = " x ".join(f"{float(z):g}" for z in zooms)
        raise ScanError(where, f"zero or invalid voxel size in the header (pixdim {sizes}); the scan's geometry is unknown")
    if not np.isfinite(img.affine).all():
        raise ScanError(where, "non-finite position or orientation (affine) in the header")
    _check_size(where, shape, dtype.itemsize)


def _check_size(where: Path, shape: Sequence[int], itemsize: int) -> None:
    """The declared size, as float32 voxels held in memory, against MAX_SCAN_BYTES."""
    declared = math.prod(int(n) for n in shape) * max(itemsize, 4)
    if declared > MAX_SCAN_BYTES:
        dims = "x".join(str(int(n)) for n in shape)
        raise ScanError(where, f"too large: declares {dims} voxels ({declared / 2**30:.1f} GiB as float32); "
                               f"one scan may hold at most {MAX_SCAN_BYTES // 2**20} MiB")


def _analyze_files(path: Path) -> list[Path]:
    """Header and image file of an Analyze pair; a missing half is reported by its name."""
    partner = path.with_suffix(_ANALYZE_PARTNER.get(path.suffix, ".img"))
    if not partner.exists():
        half, other = ("header", ".img data file") if path.suffix.lower() == ".hdr" else (".img data file", ".hdr header")
        raise ScanError(path, f"Analyze {half} without its {other} ({partner.name} is missing)")
    return sorted([path, partner])


def _check_files(files: list[Path]) -> None:
    for f in files:
        if not f.exists():
            raise ScanError(f, "file not found")
        if f.stat().st_size == 0:
            raise ScanError(f, "empty file (0 bytes)")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _reason(exc: Exception) -> str:
    first_line = _first_line(exc)
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"truncated or corrupt gzip data ({first_line})"
    if isinstance(exc, ImageFileError):
        return f"not a readable NIfTI/Analyze image ({first_line})"
    return f"unreadable image ({first_line})"


def _check_volume(where: Path, img: MetaTensor, fmt: str) -> None:
    """Training needs one finite 3D volume; MONAI would hand a 4D series over as channels."""
    channels, *spatial = img.shape
    if len(spatial) != 3 or min(spatial) < 2:
        shape = "x".join(str(n) for n in ([channels] if channels > 1 else []) + spatial)
        raise ScanError(where, f"not a 3D volume (shape {shape}); {ONE_VOLUME}")
    if channels > 1:
        raise ScanError(where, f"4D image with {channels} volumes; {ONE_VOLUME}")
    if not torch.isfinite(img).all():
        raise ScanError(where, _nonfinite_reason(where, fmt))
    if img.min() == img.max():
        raise ScanError(where, f"blank image (every voxel is {float(img.min()):g})")


def _nonfinite_reason(where: Path, fmt: str) -> str:
    """Values beyond float32's range (3.4e38) become infinite when read: say so, not "NaN"."""
    if fmt != "dicom":
        with _quiet_log("nibabel.global"):
            stored = np.asanyarray(nib.load(where).dataobj)
        if np.isfinite(stored).all():
            return f"voxel values exceed the float32 range (largest magnitude {float(np.abs(stored).max()):.3g})"
    return "contains NaN or infinite voxel values"


def _dicom_series(source: ScanSource) -> tuple[Path, list[Path]]:
    """The series' display path and files, after checking they form one gap-free volume.

    MONAI stacks a *list* of DICOM files as channels, not slices, so the series is read
    from its folder with a file-name filter that admits exactly its files.
    """
    if isinstance(source, (str, Path)):
        where = Path(source)
        files = sorted(f for f in where.iterdir() if f.is_file() and not f.name.startswith(".") and is_dicom_file(f))
    else:
        files = sorted(Path(f) for f in source)
        where = files[0].parent if files else Path()
    if not files:
        raise ScanError(where, "no DICOM files found")
    if len({f.parent for f in files}) > 1:
        raise ScanError(where, "DICOM series spread over several folders; nsql-med reads a series from one folder")
    headers = [dicom_header(f) for f in files]
    series = {h.get("SeriesInstanceUID") for h in headers}
    if len(series) > 1:
        raise ScanError(where, f"{len(series)} DICOM series in one folder; pass the files of one series")
    problem = _series_problem(headers)
    if problem:
        raise ScanError(where, problem)
    return where, files


def is_dicom_file(path: Path) -> bool:
    """DICOM files often have no suffix; the "DICM" preamble marks them, `.dcm` vouches for old ones without."""
    return path.suffix.lower() == ".dcm" or pydicom.misc.is_dicom(path)


def dicom_header(path: Path) -> pydicom.Dataset:
    """The header alone: enough to group files into series without decoding pixels."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=path.suffix.lower() == ".dcm")
    except Exception as exc:  # pydicom raises many types on damaged files
        raise ScanError(path, f"unreadable DICOM file ({_first_line(exc)})") from exc


def _series_problem(headers: Sequence[pydicom.Dataset]) -> str | None:
    """Why these slices do not form one complete 3D volume, or None if they do.

    MONAI sorts slices by InstanceNumber and spreads first-to-last position evenly, so a
    missing or repeated slice would silently distort the volume instead of failing.
    """
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        return "multi-frame (enhanced) DICOM is not supported; convert it to NIfTI first (e.g. with dcm2niix)"
    if len(headers) < 2:
        return f"a single 2D DICOM slice; {ONE_VOLUME}"
    needed = ("InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient")
    if any(h.get(tag) in (None, "") for h in headers for tag in needed):
        return "DICOM slices without InstanceNumber, ImagePositionPatient or ImageOrientationPatient"
    if len({(h.get("Rows"), h.get("Columns")) for h in headers}) > 1:
        return "DICOM slices of different sizes"
    declared = int(headers[0].get("Rows") or 0) * int(headers[0].get("Columns") or 0) * len(headers) * 4
    if declared > MAX_SCAN_BYTES:
        return f"too large: {len(headers)} slices of {headers[0].Rows}x{headers[0].Columns} " \
               f"({declared / 2**30:.1f} GiB as float32); one scan may hold at most {MAX_SCAN_BYTES // 2**20} MiB"
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    if not np.allclose(orientations, orientations[0], atol=1e-4):
        return "DICOM slices with different orientations"
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    ordered = sorted(headers, key=lambda h: int(h.InstanceNumber))
    numbers = [int(h.InstanceNumber) for h in ordered]
    depth = np.array([np.dot(normal, [float(v) for v in h.ImagePositionPatient]) for h in ordered])
    distinct = len(np.unique(np.round(depth, 3)))
    if distinct < len(depth):
        if len(depth) % distinct == 0:
            return f"4D image with {len(depth) // distinct} volumes; {ONE_VOLUME}"
        return "DICOM slices at repeated positions"
    jumps = [(a, b) for a, b in zip(numbers, numbers[1:]) if b - a != 1]
    if jumps:
        return f"missing DICOM slice (InstanceNumber jumps from {jumps[0][0]} to {jumps[0][1]})"
    steps = np.diff(depth)
    step = float(np.median(steps))
    if np.any(np.abs(steps - step) > 0.1 * abs(step) + 1e-3):
        return "irregular DICOM slice positions (a slice is missing or misplaced)"
    return None


def _exact_files_regex(files: list[Path]) -> str:
    """Match exactly these files, as MONAI lists them from their folder."""
    folder = re.escape(os.path.join(str(files[0].parent), ""))
    return folder + "(?:" + "|".join(re.escape(f.name) for f in files) + r")\Z"
