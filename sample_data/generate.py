"""Procedurally generate the nsql-med sample cohort of synthetic skull-stripped T1w brain MRI.

Run ``python sample_data/generate.py``: every file is (re)written next to this script.
No image data from any real scan is used. Each brain is built from analytic signed distance
functions (SDFs, in Talairach-like millimetres), seeded smooth noise for cortical folding and
cerebellar folia, and rules that tie atrophy to age and CDR. Seeds are fixed and gzip
headers carry no timestamp, so two runs produce byte-identical files.
"""
from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import MRImageStorage, RLELossless, generate_uid
from scipy import ndimage

HERE = Path(__file__).resolve().parent
SEED = 20240611
N_SUBJECTS = 30
SHAPE = (88, 104, 88)  # OASIS T88 atlas grid (176x208x176 @ 1 mm) at half resolution
AFFINE = np.array([[2.0, 0, 0, -87], [0, 2.0, 0, -103], [0, 0, 2.0, -87], [0, 0, 0, 1]])
TAL_SHIFT = np.array([0.0, -17.0, 10.0])  # Talairach mm = world mm + shift: brain centre at world 0
ICV_REF_ML = 1400.0  # fixed intracranial reference volume: nWBV = tissue volume / ICV_REF_ML
WM, GM, CSF = 1.0, 0.66, 0.20  # T1 intensities relative to white matter
LABEL_NAMES = ["background", "CSF", "GM", "WM"]  # dseg classes, FSL FAST's order
GREY_NUCLEUS, VENTRICLE = (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)  # their (CSF, GM, WM) fractions
STORE_WM = 100  # stored value of white matter; uint8 with noise over a few codes gzips to ~160 KB
EDGE = 1.0  # mm; width of the sigmoid that turns SDFs into partial-volume fractions
# Deep grey nuclei: (centre, radii, relative T1 intensity), mirrored to both hemispheres.
NUCLEI = [((10, -18, 7), (9, 15, 9), 0.78),  # thalamus
          ((12, 12, 8), (5.5, 9, 7.5), 0.68),  # caudate head
          ((25, 2, 1), (5.5, 14, 9), 0.70),  # putamen
          ((18, -2, -1), (4, 8, 5), 0.84),  # globus pallidus
          ((25, -24, -13), (5, 16, 5), 0.63),  # hippocampus
          ((22, -5, -18), (6, 6, 6), 0.65),  # amygdala
          ((0, -14, 0), (5, 22, 12), 0.74)]  # diencephalon walls of the third ventricle


@dataclass
class Subject:
    """One synthetic participant; ``atrophy`` (0 = young healthy .. ~1.2 = old, demented) drives anatomy."""
    pid: str
    session: str
    age: int
    sex: str
    cdr: float
    atrophy: float
    seed: int


def make_cohort() -> list[Subject]:
    """Ages 45-95 with dementia (CDR > 0) becoming likelier with age, as in OASIS."""
    rng, people = np.random.default_rng(SEED), []
    for n in range(1, N_SUBJECTS + 1):
        age = int(rng.integers(45, 96))
        p = float(np.clip((age - 55) / 40, 0, 0.75))
        cdr = float(rng.choice([0.0, 0.5, 1.0], p=[1 - p, 0.65 * p, 0.35 * p]))
        days = 0 if rng.random() < 0.5 else int(rng.integers(30, 3000))
        people.append(make_subject(f"sub-OAS3{n:04d}", f"ses-d{days:04d}", age, cdr, rng, n))
    return people


def make_subject(pid: str, session: str, age: int, cdr: float, rng: np.random.Generator, seed: int) -> Subject:
    """Atrophy grows with age after 45 and with CDR, plus individual variation."""
    atrophy = 0.55 * np.clip((age - 45) / 50, 0, 1) + 0.35 * cdr + 0.07 * rng.standard_normal()
    return Subject(pid, session, age, str(rng.choice(["F", "M"])), cdr, float(np.clip(atrophy, 0, 1.3)), seed)


# ---------------------------------------------------------------- geometry primitives
def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic via tanh (no overflow warnings far from surfaces)."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two SDFs (polynomial blend of radius k mm) - no creases where lobes meet."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0, 1)
    return b + (a - b) * h - k * h * (1 - h)


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth intersection of two SDFs."""
    return -smin(-a, -b, k)


def ellipsoid(x, y, z, c, r) -> np.ndarray:
    """Good approximate SDF of an ellipsoid (k0*(k0-1)/k1 bound, exact on the surface)."""
    u, v, w = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    k0 = np.sqrt(u * u + v * v + w * w)
    k1 = np.sqrt((u / r[0]) ** 2 + (v / r[1]) ** 2 + (w / r[2]) ** 2)
    return k0 * (k0 - 1) / np.maximum(k1, 1e-6)


def tube(x, y, z, pts: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Approximate SDF of a tube along a polyline whose per-axis radii vary along it."""
    d = np.full(np.shape(x), np.inf, np.float32)
    for a, b, ra, rb in zip(pts[:-1].tolist(), pts[1:].tolist(), radii[:-1].tolist(), radii[1:].tolist()):
        ab = [b[i] - a[i] for i in range(3)]  # python floats keep the arithmetic in float32
        t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / sum(v * v for v in ab), 0, 1)
        r = [ra[i] + t * (rb[i] - ra[i]) for i in range(3)]
        q = [(p - a[i] - t * ab[i]) / r[i] for i, p in enumerate((x, y, z))]
        k = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
        d = np.minimum(d, (k - 1) * np.minimum(np.minimum(r[0], r[1]), r[2]))
    return d


def smooth_field(rng: np.random.Generator, coarse: tuple[int, int, int], amplitude: float) -> np.ndarray:
    """Band-limited random field: coarse white noise upsampled with separable Gaussian kernels
    (three small matrix products - far cheaper than blurring or spline-zooming the full grid)."""
    f = rng.standard_normal(coarse, np.float32) * np.float32(amplitude)
    for ax, (n, c) in enumerate(zip(SHAPE, coarse)):
        pos = (np.arange(n) + 0.5) / n * c - 0.5
        m = np.exp(-0.5 * ((pos[:, None] - np.arange(c)[None, :]) / 0.7) ** 2)
        m /= np.sqrt((m ** 2).sum(1, keepdims=True))  # unit variance everywhere
        f = np.moveaxis(np.tensordot(m.astype(np.float32), f, axes=(1, ax)), 0, ax)
    return np.ascontiguousarray(f)


def tal_grid() -> list[np.ndarray]:
    """Talairach-like mm coordinates of every voxel centre."""
    axes = [(np.arange(n) * 2.0 + AFFINE[i, 3] + TAL_SHIFT[i]).astype(np.float32) for i, n in enumerate(SHAPE)]
    return np.meshgrid(*axes, indexing="ij")


# ---------------------------------------------------------------- anatomy
def tentorium(x, y) -> np.ndarray:
    """Height of the cerebrum's floor: flat under frontal/temporal lobes, a tent over the cerebellum."""
    back = np.clip(-35 - y, 0, None)
    return -20 + 0.25 * back + 0.1 * np.clip(30 - np.abs(x), 0, None) * np.clip(back / 25, 0, 1)


def cerebrum(x, y, z) -> np.ndarray:
    """Hemisphere envelope: a dome narrowing to the occipital pole, cut flat below, plus temporal lobes."""
    occ, fro = np.clip((-17 - y) / 85, 0, 1), np.clip((y + 17) / 85, 0, 1)
    width = 69 * (1 - 0.16 * occ ** 2 - 0.07 * fro ** 2)
    dome = ellipsoid(x, y, z, (0, -17, 14), (width, 85, 61))
    upper = smax(dome, tentorium(x, y) - z, 4)
    cx, cz = 42 - 0.12 * np.maximum(y + 12, 0), -20 - 0.12 * (y + 12)
    return smin(upper, ellipsoid(np.abs(x), y, z, (cx, -12, cz), (21, 40, 19)), 6)


def cerebellum(x, y, z) -> np.ndarray:
    """Two hemispheres and a vermis tucked under the tentorium with a CSF gap."""
    hemi = ellipsoid(np.abs(x), y, z, (22, -58, -35), (27, 27, 21))
    cb = smin(hemi, ellipsoid(x, y, z, (0, -55, -33), (12, 26, 22)), 5)
    return smax(cb, z - (tentorium(x, y) - 3), 2)


BS_PTS = np.array([(0, -18, 2), (0, -22, -16), (0, -26, -30), (0, -32, -46), (0, -35, -60)], float)
BS_R = np.array([(13, 10, 6), (11, 10, 6), (13, 13, 8), (9, 9, 8), (8, 8, 8)], float)


def corpus_callosum_top(y) -> tuple[np.ndarray, np.ndarray]:
    """Dorsal surface of the callosal arch (genu y=31 .. splenium y=-41) and where it exists."""
    t = np.clip(1 - ((y + 5) / 36) ** 2, 0, None)
    return 4 + 22 * t ** 0.25, t > 0  # flat body, thick rounded genu and splenium


def fold_distance(rng: np.random.Generator, depth: np.ndarray) -> np.ndarray:
    """Approx. distance (mm) to the zero set of smooth noise sampled at each point's foot on the surface.

    Moving every point back along the depth gradient to (nearly) the surface before sampling makes
    the noise's zero set a maze of sheets perpendicular to the local surface, including the medial
    and insular surfaces: that is what sulci look like. |n| / |grad n| turns the field into mm.
    """
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE, np.float32), 1.3)
    noise /= noise.std()
    normal = np.gradient(depth, 2.0)
    step = 0.6 * np.clip(depth, 0, 25) / 2  # in voxels; < 1 so sulci bend and lean
    idx = np.stack([np.arange(n, dtype=np.float32).reshape([-1 if i == ax else 1 for i in range(3)])
                    - step * normal[ax] + smooth_field(rng, (11, 13, 11), 1.5) for ax, n in enumerate(SHAPE)])
    n = ndimage.map_coordinates(noise, idx, order=1, mode="mirror")
    g = np.gradient(n, 2.0)
    return np.abs(n) / (np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2) + 1e-3)


def medial_sulci(x, y, z) -> np.ndarray:
    """Distance (mm) to the landmark sulci every midsagittal T1 shows: the cingulate sulcus arching
    ~14 mm above the corpus callosum, and the calcarine and parieto-occipital sulci meeting behind it."""
    rho = np.sqrt(((y + 5) / 50) ** 2 + ((z - 4 - 0.5 * np.abs(x)) / 36) ** 2)  # rises laterally
    cing = np.where((z > -5) & (y > -35), np.abs(rho - 1) * 36, 99)
    calc = np.where(y < -42, np.abs(z - 4 - 0.08 * (y + 42)), 99)
    po = np.where(-0.583 * (y + 42) + 0.813 * (z - 4) > 0, np.abs(0.813 * (y + 42) + 0.583 * (z - 4)), 99)
    return np.maximum(np.minimum.reduce([cing, calc, po]), np.abs(x) - 12)


def cerebral_csf_distance(rng, x, y, z, t_cer, a: float) -> np.ndarray:
    """Signed distance to the nearest CSF (negative inside CSF): outer surface, fissures, sulci.

    Atrophy widens the interhemispheric and Sylvian fissures and every sulcus.
    """
    cc, over_cc = corpus_callosum_top(y)
    floor = np.where(over_cc, cc + 2 + 2 * a, -99)
    s_ih = smax(np.abs(x) - (0.9 + 1.5 * a), floor - z, 1)
    zs = -6 - 0.3 * y + smooth_field(rng, (8, 9, 8), 2.5)
    s_syl = np.maximum.reduce([np.abs(z - zs) - (0.8 + 1.6 * a), 36 - np.abs(x), y - 22, -45 - y])
    depth = np.minimum(np.minimum(-t_cer, s_ih), s_syl)
    sulc_depth = 15 + smooth_field(rng, (14, 16, 14), 5.0)
    medial = s_ih < np.minimum(-t_cer, s_syl)  # medial-surface sulci are shallower (and named ones dominate)
    sulc_depth = np.where(medial, np.float32(0.5), np.float32(1)) * sulc_depth
    width = (0.55 + 1.0 * a) * (1.6 - 0.6 * np.clip(depth / 12, 0, 1))  # V-shaped: widest at the surface
    dist = np.minimum(fold_distance(rng, depth), medial_sulci(x, y, z))
    s_sulc = smax(dist - width, depth - sulc_depth, 2.5)
    s_sulc = smax(s_sulc, -ellipsoid(x, y, z, (0, -8, 2), (29, 38, 22)), 2)  # no sulci into the deep nuclei
    return np.minimum(depth, s_sulc)


def cerebellar_csf_distance(rng, x, y, z, t_cb, a: float) -> np.ndarray:
    """Fissures radiating from the fastigium give lobules with a branching white-matter core
    (arbor vitae); shallower secondary fissures between them give the folia."""
    wrap = lambda p: (p + np.pi) % (2 * np.pi) - np.pi  # angular distance to the nearest fissure
    dy, dz = y + 44 + 0.006 * x * x, z + 30
    r = np.sqrt(dy * dy + dz * dz) + 1e-3
    phi = 10 * np.arctan2(dz, -dy) + smooth_field(rng, (6, 7, 6), 1.0)[CEREBELLUM_BOX]
    depth, hw = -t_cb, 0.5 + 0.7 * a
    s1 = smax(np.abs(wrap(phi)) / 10 * r - hw, depth - 10 - 3 * np.cos(phi / 2.3), 1)
    s2 = smax(np.abs(wrap(phi + np.pi)) / 10 * r - 0.8 * hw, depth - 5.5, 1)
    s3 = smax(np.abs(wrap(2 * phi + np.pi / 2)) / 20 * r - 0.5 * hw, depth - 3, 1)
    return np.minimum.reduce([depth, s1, s2, s3])


# Lateral ventricle centre line: (y, z, medial wall |x|, rx, ry, rz) from frontal-horn tip via body
# and atrium to the occipital-horn tip; the temporal horn branches off the atrium: (|x|, y, z, r).
LATERAL = [(32, 10, 1.5, 3.0, 4, 4), (20, 13, 1.0, 4.0, 5, 6), (4, 16, 1.0, 3.5, 5, 4.5),
           (-14, 17, 1.5, 3.5, 5, 4.5), (-30, 14, 9.0, 5.5, 6, 6.5), (-60, 6, 14.0, 2.0, 4, 2.0)]
TEMPORAL_HORN = [(18, -30, 12, 5.0), (29, -28, -2, 3.0), (32, -17, -12, 2.5), (29, -4, -19, 1.5)]


def ventricles(x, y, z, a: float) -> np.ndarray:
    """SDF of the C-shaped lateral ventricles (frontal horn, body, atrium, occipital and temporal
    horns), third and fourth ventricles. They widen with atrophy, mostly sideways, away from
    the septum, as hydrocephalus ex vacuo does; the caudate heads keep indenting them."""
    gx, gz, gt = 1 + 1.4 * a, 1 + 0.8 * a, 1 + 0.6 * a
    d = np.full(x.shape, np.inf, np.float32)
    for sx in (-1, 1):
        pts = np.array([(sx * (m + rx * gx), yy, zz) for yy, zz, m, rx, _, _ in LATERAL])
        rad = np.array([(rx * gx, ry, rz * gz) for _, _, _, rx, ry, rz in LATERAL])
        tilt = 0.35 * np.clip((y + 25) / 20, 0, 1)  # frontal horn/body: floor rises laterally (butterfly)
        d = np.minimum(d, tube(x, y, z - tilt * (sx * x - 6), pts, rad))
        horn = np.array([(sx * hx, hy, hz) for hx, hy, hz, _ in TEMPORAL_HORN])
        d = np.minimum(d, tube(x, y, z, horn, np.array([(r * gt, 4, r * gt) for *_, r in TEMPORAL_HORN])))
        c, r, _ = NUCLEI[1]
        d = smax(d, -ellipsoid(sx * x, y, z, c, r), 1.5)
    cc, over_cc = corpus_callosum_top(y)
    roof = cc - 5 + 3 * a + 2 * np.maximum(np.abs(x) - 12, 0)  # the callosal roof (thinning) spans the bodies
    d = smax(d, z - np.where(over_cc, roof, 99), 1.5)
    third = ellipsoid(x, y, z, (0, -10, -1), (1.2 + 2.5 * a, 12, 8))
    fourth = ellipsoid(x, y, z, (0, -40, -35), (4 + 2 * a, 3 + a, 6))
    return np.minimum(d, np.minimum(third, fourth))


def box(lo, hi) -> tuple[slice, ...]:
    """Voxel slices covering a Talairach bounding box, so small structures are evaluated locally."""
    i0 = np.floor((np.array(lo) - TAL_SHIFT - AFFINE[:3, 3]) / 2).astype(int)
    i1 = np.ceil((np.array(hi) - TAL_SHIFT - AFFINE[:3, 3]) / 2).astype(int) + 1
    return tuple(slice(max(int(u), 0), min(int(v), n)) for u, v, n in zip(i0, i1, SHAPE))


CEREBELLUM_BOX = box((-65, -100, -72), (65, -20, 0))
BRAINSTEM_BOX = box((-20, -50, -80), (20, -5, 12))
DEEP_BOX = box((-45, -75, -50), (45, 40, 35))


def local(sl: tuple[slice, ...], values: np.ndarray, fill: float = 99.0) -> np.ndarray:
    """Embed an SDF evaluated on a sub-box into the full grid (far outside = ``fill`` mm)."""
    out = np.full(SHAPE, fill, np.float32)
    out[sl] = values
    return out


def render(s: Subject) -> tuple[np.ndarray, np.ndarray, float]:
    """Build one T1w volume (stored units) and return it with its tissue labels and brain-tissue volume in mL.

    The labels follow the same partial-volume fractions (CSF, GM, WM) that make the intensities,
    each voxel taking the class with the largest fraction inside the skull-strip mask.
    """
    rng = np.random.default_rng([SEED, s.seed])
    a = s.atrophy
    size = 1 + 0.008 * np.clip(rng.standard_normal(), -2, 2) + (0.005 if s.sex == "M" else -0.005)  # atlas space
    centre = (0.0, -17.0, 10.0)  # smooth random deformation + size change about the brain centre
    x, y, z = [(g - c) / float(size * (1 + 0.005 * rng.standard_normal())) + c + smooth_field(rng, (5, 6, 5), 1.5)
               for g, c in zip(tal_grid(), centre)]
    cb, bs, deep = CEREBELLUM_BOX, BRAINSTEM_BOX, DEEP_BOX
    t_cer = cerebrum(x, y, z)
    t_cb = cerebellum(x[cb], y[cb], z[cb])
    t_bs = smin(tube(x[bs], y[bs], z[bs], BS_PTS, BS_R), ellipsoid(x[bs], y[bs], z[bs], (0, -21, -31), (15, 11, 12)), 3)
    # skull-strip mask: the pre-atrophy envelope; the smooth union closes the thin gaps between parts
    mask = smin(smin(t_cer, local(cb, t_cb), 4), local(bs, t_bs), 4) < 1.0
    shrink = 1.0 * a  # the atrophied brain pulls away from the mask, leaving a CSF rim
    gm, thick = GM + 0.05 * a, 3.0 - 0.8 * a  # GM/WM contrast and cortical thickness fall with age

    def ribbon(sd: np.ndarray, th: float, wm: float, g: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tissue, grey = sigmoid(sd / EDGE), sigmoid((th - sd) / EDGE)
        return CSF + tissue * (wm + (g - wm) * grey - CSF), tissue, fractions(tissue, grey)

    img, frac, parts = ribbon(cerebral_csf_distance(rng, x, y, z, t_cer + shrink, a), thick, WM, gm)
    f_cer = frac.copy()
    s_cb = cerebellar_csf_distance(rng, x[cb], y[cb], z[cb], t_cb + shrink, a)
    i_cb, f_cb, p_cb = ribbon(s_cb, 2.6 - 0.4 * a, 0.94, gm - 0.02)
    parts[(slice(None), *cb)] = np.where(f_cb > frac[cb], p_cb, parts[(slice(None), *cb)])
    img[cb], frac[cb] = np.maximum(img[cb], i_cb), np.maximum(frac[cb], f_cb)
    f_bs = sigmoid(-(t_bs + 0.5 * shrink) / EDGE)
    parts[(slice(None), *bs)] = np.where(f_bs > frac[bs], fractions(f_bs, 0 * f_bs), parts[(slice(None), *bs)])
    img[bs], frac[bs] = np.maximum(img[bs], CSF + f_bs * (0.82 - CSF)), np.maximum(frac[bs], f_bs)
    xs, ys, zs = x[deep], y[deep], z[deep]
    in_deep = (slice(None), *deep)
    for c, r, val in NUCLEI:
        shrink_n = 1 - (0.25 * s.cdr if val < 0.66 else 0.05 * a)  # hippocampus/amygdala atrophy with CDR
        w = sigmoid(-ellipsoid(np.abs(xs), ys, zs, c, [float(v * shrink_n) for v in r]) / EDGE) * f_cer[deep]
        img[deep] += w * (val + 0.03 * a - img[deep])
        parts[in_deep] = parts[in_deep] * (1 - w) + w * np.array(GREY_NUCLEUS)[:, None, None, None]
    v = ventricles(xs, ys, zs, a)
    img[deep] *= 1 - 0.12 * a * np.exp(-np.maximum(v, 0) / 4)  # periventricular white-matter change
    wv = sigmoid(-v / EDGE)
    img[deep] += wv * (CSF - img[deep])
    frac[deep] *= 1 - wv
    parts[in_deep] = parts[in_deep] * (1 - wv) + wv * np.array(VENTRICLE)[:, None, None, None]
    labels = ((np.argmax(parts, axis=0) + 1) * mask).astype(np.uint8)
    img *= np.exp(smooth_field(rng, (3, 3, 3), 0.05))  # smooth multiplicative bias field
    sig = 0.03  # Rician noise: magnitude of a complex signal with Gaussian noise on both channels
    noisy = np.hypot(img + sig * rng.standard_normal(SHAPE, np.float32), sig * rng.standard_normal(SHAPE, np.float32))
    out = np.clip(np.round(noisy * STORE_WM), 0, 255) * mask
    return out.astype(np.uint8), labels, float((frac * mask).sum() * 8e-3)


def fractions(tissue: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Partial-volume fractions (CSF, GM, WM) of a voxel that is ``tissue`` brain, ``grey`` of it cortex."""
    return np.stack([1 - tissue, tissue * grey, tissue * (1 - grey)])


# ---------------------------------------------------------------- writers
def save_nifti_gz(vol: np.ndarray, path: Path, what: str = "T1w") -> None:
    """gzip ourselves with mtime=0 and no file name, so the bytes never depend on when we ran."""
    img = nib.Nifti1Image(vol, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=2)  # aligned to the (half-resolution) T88 atlas grid
    img.header["descrip"] = f"nsql-med synthetic {what}: procedural, no patient data".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))


def save_analyze(vol: np.ndarray, path: Path) -> None:
    """OASIS-1 style Analyze 7.5 pair with a trailing singleton dim. Analyze has no orientation
    field and readers assume radiological (x flipped) order, so flip x to keep the anatomy right."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hdr = nib.AnalyzeHeader()
    hdr.set_data_shape(SHAPE + (1,))
    hdr.set_zooms((2.0, 2.0, 2.0, 1.0))
    hdr.set_data_dtype(np.uint8)
    nib.AnalyzeImage(np.ascontiguousarray(vol[::-1, :, :, None]), None, hdr).to_filename(path)


def save_dicom(vol: np.ndarray, folder: Path) -> None:
    """One RLE-lossless MR Image Storage file per axial slice, in DICOM's LPS patient frame."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = lambda *key: generate_uid(entropy_srcs=["nsql-med sample_data", *key])  # deterministic UIDs
    study, series, frame = uid("study"), uid("series"), uid("frame")
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, uid("sop", str(k))
        meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "SYNTHETIC^SUBJECT", "SYNTH0001", "O", ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"  # fixed: output must not depend on the day
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.SeriesNumber = "1", "", "", 1
        ds.Modality, ds.Manufacturer, ds.InstitutionName = "MR", "nsql-med (synthetic)", "none"
        ds.SeriesDescription = "Synthetic T1w MPRAGE (procedural, no patient data)"
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", ["SP", "MP"], "", "3D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 2400, 3.16, 1, 1.5
        ds.PositionReferenceIndicator, ds.InstanceNumber = "", k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # rows toward patient left, columns posterior
        ds.ImagePositionPatient = [-(AFFINE[0, 3] + 2.0 * (SHAPE[0] - 1)), -(AFFINE[1, 3] + 2.0 * (SHAPE[1] - 1)),
                                    float(AFFINE[2, 3] + 2 * k)]  # voxel (i, j) = (last, last), in LPS
        ds.SliceLocation, ds.SliceThickness, ds.SpacingBetweenSlices = float(AFFINE[2, 3] + 2 * k), 2.0, 2.0
        ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = [2.0, 2.0], 1, 0, "US"
        ds.WindowCenter, ds.WindowWidth = STORE_WM * 0.6, STORE_WM * 1.4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        pixels = np.ascontiguousarray(vol[::-1, ::-1, k].T).astype(np.uint16)  # [row=P..A reversed, col=R->L]
        ds.Rows, ds.Columns = pixels.shape
        ds.compress(RLELossless, pixels, encoding_plugin="pydicom", generate_instance_uid=False)
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)


def write_metadata(rows: list[tuple[Subject, float]]) -> None:
    """BIDS top-level files; participants.tsv carries the nWBV measured on each generated image."""
    desc = {"Name": "nsql-med synthetic OASIS-style T1w sample cohort", "BIDSVersion": "1.8.0",
            "DatasetType": "raw", "License": "CC0-1.0", "Authors": ["nsql-med contributors"],
            "GeneratedBy": [{"Name": "nsql-med sample_data/generate.py",
                             "Description": "Procedural generator; every image is synthetic, no patient data."}],
            "HowToAcknowledge": "Synthetic data: no participants, no acquisition. Regenerate with "
                                "`python sample_data/generate.py`."}
    cols = {"participant_id": {"Description": "Synthetic participant id in OASIS-3 style"},
            "age": {"Description": "Age at the imaging session", "Units": "year"},
            "sex": {"Description": "Sex", "Levels": {"M": "male", "F": "female"}},
            "CDR": {"Description": "Clinical Dementia Rating (synthetic); drives atrophy in the image", "Levels": {
                "0": "normal", "0.5": "very mild dementia", "1": "mild dementia", "2": "moderate dementia"}},
            "nWBV": {"Description": f"Normalized whole-brain volume: brain tissue volume measured on the "
                                    f"generated image divided by a fixed intracranial reference of {ICV_REF_ML:g} mL"}}
    lines = ["participant_id\tage\tsex\tCDR\tnWBV"]
    lines += [f"{s.pid}\t{s.age}\t{s.sex}\t{s.cdr:g}\t{ml / ICV_REF_ML:.3f}" for s, ml in rows]
    ignore = "generate.py\nformats/\n*_dseg.nii.gz\ndseg.tsv"  # label maps are derivatives in BIDS terms
    classes = "\n".join(["index\tname", *(f"{i}\t{n}" for i, n in enumerate(LABEL_NAMES))])
    for name, text in [("dataset_description.json", json.dumps(desc, indent=2)), (".bidsignore", ignore),
                       ("participants.json", json.dumps(cols, indent=2)), ("participants.tsv", "\n".join(lines)),
                       ("dseg.tsv", classes)]:
        (HERE / name).write_text(text + "\n")


def main() -> None:
    for old in [*HERE.glob("sub-OAS3*"), HERE / "formats"]:  # only what this script writes
        shutil.rmtree(old, ignore_errors=True)
    rows = []
    for s in make_cohort():
        vol, labels, tissue_ml = render(s)
        anat = HERE / s.pid / s.session / "anat"
        save_nifti_gz(vol, anat / f"{s.pid}_{s.session}_T1w.nii.gz")
        save_nifti_gz(labels, anat / f"{s.pid}_{s.session}_dseg.nii.gz", "tissue labels")
        rows.append((s, tissue_ml))
    write_metadata(rows)
    rng = np.random.default_rng([SEED, 1000])
    vol, labels, _ = render(make_subject("OAS1_0042", "", 74, 0.5, rng, 1001))
    stem = HERE / "formats" / "analyze" / "OAS1_0042_MR1_mpr_n4_anon_111_t88_masked_gfc"
    save_analyze(vol, stem.with_name(stem.name + ".hdr"))
    save_analyze(labels, stem.with_name(stem.name + "_fseg.hdr"))  # FAST's name; beside it, so formats/ stays one folder
    save_dicom(render(make_subject("SYNTH0001", "", 58, 0.0, rng, 1002))[0], HERE / "formats" / "dicom")


if __name__ == "__main__":
    main()
