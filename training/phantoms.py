"""Synthetic head CT in Hounsfield units, with known bleeds, written as real DICOM CT series.

Used by the training pipeline (labelled slices with exact masks), by the tests (series with known HU,
positions, tilt, transfer syntax) and by the demo. Numpy and pydicom only (no torch), so ``dicom_io``
tests and the bench can import it.

Anatomy, in the DICOM patient coordinate system (LPS, mm; PS3.3 C.7.6.2.1.1: +x patient left,
+y posterior, +z head), centred on the head:

- scalp (skin ~45 HU, subcutaneous fat ~-90 HU), skull (outer and inner tables ~1500 HU, diploe
  ~800 HU: a mean of ~1000-1300 HU across the bone), a thin CSF rim under the inner table;
- brain with grey/white contrast (cortex ~40 HU, white matter ~26 HU, deep grey nuclei ~37 HU), gyri and
  CSF-filled sulci, interhemispheric fissure with falx, sylvian fissures, basal cisterns;
- lateral, third and fourth ventricles (CSF ~5 HU); superior sagittal sinus (unenhanced blood ~55 HU,
  ~200 HU with contrast);
- confounders that are bright but are not bleeds: choroid plexus and pineal calcifications (~120-300 HU),
  the falx (~50 HU), the sinus;
- optionally one bleed with its mask: ``epidural`` (biconvex lens against the inner table),
  ``subdural`` (thin broad crescent along the inner table, not crossing the midline),
  ``intraparenchymal`` (irregular blob with a hypodense oedema rim, the rim not in the mask),
  ``intraventricular`` (layering in the dependent, posterior part of a lateral ventricle),
  ``subarachnoid`` (in the sylvian fissure, basal cisterns and nearby sulci). Blood 58-80 HU.

The volume is point-sampled at slice centres (no through-plane partial volume), blurred in plane by a
[0.15, 0.7, 0.15] kernel (scanner MTF) and given Gaussian noise of ``noise_hu * sqrt(5 mm / thickness)``
(thin slices are noisier, as on a scanner). Outside the circular reconstruction field of view the
value is exactly -1000 HU (air, no noise): that is where :func:`write_dicom_series` writes the Pixel
Padding Value when asked.

Gantry tilt follows real scanners (e.g. the CQ500 series): Image Orientation (Patient) is rotated
about the patient x axis and Image Position (Patient) advances along the table (+z) by the slice
spacing, so the planes are sheared and the distance between them along their normal is
``spacing * cos(tilt)``.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

logger = logging.getLogger(__name__)

BLEED_SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
"""Bleed names, the subtype class names of ``monai_app.pipeline.network.CLASSES`` (without ``any``)."""

DEFAULT_FOV_MM = 240.0
"""Display field of view used when ``PhantomSpec.pixel_spacing`` is None (a typical head reconstruction)."""

RESCALE_INTERCEPT = -1024.0
"""Stored value 0 is -1024 HU (PS3.3 C.11.1.1.2: HU = stored * slope + intercept); slope is 1."""

NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
"""Uncompressed syntaxes pydicom writes itself (deflate compresses the whole dataset, PS3.5 A.5)."""

PYDICOM_ENCODED_TRANSFER_SYNTAXES: tuple[UID, ...] = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
"""Compressed syntaxes written with pydicom's encoders (RLE: pydicom/pylibjpeg-rle; JPEG-LS: pyjpegls;
JPEG 2000: pylibjpeg-openjpeg)."""

GDCM_ENCODED_TRANSFER_SYNTAXES: tuple[UID, ...] = (JPEGLosslessSV1, JPEGLossless)
"""JPEG Lossless (Process 14, SV1 and any predictor): pydicom has no encoder, so these go through GDCM."""


class Tissue(IntEnum):
    """Labels of :attr:`Phantom.labels` (uint8), each with a nominal HU (see :data:`TISSUE_HU`)."""

    AIR = 0
    SKIN = 1
    FAT = 2
    BONE_CORTEX = 3
    BONE_DIPLOE = 4
    CSF = 5
    GREY = 6
    WHITE = 7
    DEEP_GREY = 8
    VENTRICLE = 9
    FALX = 10
    VESSEL = 11
    CALCIFICATION = 12
    EDEMA = 13
    BLOOD = 14


TISSUE_HU: dict[Tissue, float] = {
    Tissue.AIR: -1000.0,
    Tissue.SKIN: 45.0,
    Tissue.FAT: -90.0,
    Tissue.BONE_CORTEX: 1500.0,
    Tissue.BONE_DIPLOE: 800.0,
    Tissue.CSF: 8.0,
    Tissue.GREY: 40.0,
    Tissue.WHITE: 26.0,
    Tissue.DEEP_GREY: 37.0,
    Tissue.VENTRICLE: 5.0,
    Tissue.FALX: 50.0,
    Tissue.VESSEL: 55.0,
    Tissue.CALCIFICATION: 220.0,
    Tissue.EDEMA: 18.0,
    Tissue.BLOOD: 70.0,  # replaced per phantom by the drawn bleed HU
}
"""Nominal HU per tissue before blur and noise (unenhanced)."""

_INTRACRANIAL_MIN = Tissue.CSF  # labels >= CSF are inside the inner table


@dataclass(frozen=True)
class PhantomSpec:
    """What to synthesise. Frozen and validated: a spec that constructs is one :func:`make_phantom` can build.

    Args:
        n_slices: number of slices (Z).
        size: rows = columns of each slice (Y = X), pixels.
        slice_thickness: nominal slice thickness, mm (sets the noise level and the DICOM Slice Thickness).
        pixel_spacing: in-plane pixel size, mm; None = ``DEFAULT_FOV_MM / size`` (the head fills the image
            at any size; a fixed spacing with a small ``size`` crops the head).
        bleed: None (normal) or one of :data:`BLEED_SUBTYPES`.
        seed: anatomy, bleed and noise all come from this seed: same spec, same voxels.
        tilt_deg: gantry tilt, degrees, rotation of the image plane about the patient x axis.
        slice_spacing: table increment between slices, mm; None = ``slice_thickness`` (contiguous).
        noise_hu: noise standard deviation at 5 mm, HU (scaled by sqrt(5 / slice_thickness)).
        calcifications: add choroid plexus and pineal calcifications (bright non-bleed confounders).
        contrast: an iodinated contrast-enhanced acquisition (enhancing sinus and choroid plexus).
        bleed_hu: blood density, HU; None = drawn from the seed (60-80 HU, 58-72 HU where blood mixes
            with CSF: subarachnoid, intraventricular).
        z_center_mm: patient z of the centre of the slice stack relative to the head centre, mm; the default
            puts a short stack through the lateral ventricles.
    """

    n_slices: int = 32
    size: int = 256
    slice_thickness: float = 5.0
    pixel_spacing: float | None = None
    bleed: str | None = None
    seed: int = 0
    tilt_deg: float = 0.0
    slice_spacing: float | None = None
    noise_hu: float = 4.0
    calcifications: bool = True
    contrast: bool = False
    bleed_hu: float | None = None
    z_center_mm: float = 15.0

    def __post_init__(self) -> None:
        if not 1 <= self.n_slices <= 2048:
            raise ValueError(f"n_slices must be in 1..2048, got {self.n_slices}")
        if not 16 <= self.size <= 2048:
            raise ValueError(f"size must be in 16..2048, got {self.size}")
        if not self.slice_thickness > 0:
            raise ValueError(f"slice_thickness must be > 0 mm, got {self.slice_thickness}")
        if self.pixel_spacing is not None and not self.pixel_spacing > 0:
            raise ValueError(f"pixel_spacing must be > 0 mm, got {self.pixel_spacing}")
        if self.slice_spacing is not None and not self.slice_spacing > 0:
            raise ValueError(f"slice_spacing must be > 0 mm, got {self.slice_spacing}")
        if self.bleed is not None and self.bleed not in BLEED_SUBTYPES:
            raise ValueError(f"bleed must be None or one of {BLEED_SUBTYPES}, got {self.bleed!r}")
        if not -60.0 <= self.tilt_deg <= 60.0:
            raise ValueError(f"tilt_deg must be within +-60 degrees, got {self.tilt_deg}")
        if self.noise_hu < 0:
            raise ValueError(f"noise_hu must be >= 0, got {self.noise_hu}")
        if self.bleed_hu is not None and not -100.0 <= self.bleed_hu <= 200.0:
            raise ValueError(f"bleed_hu must be a plausible blood density (-100..200 HU), got {self.bleed_hu}")

    @property
    def row_spacing(self) -> float:
        """In-plane pixel size, mm (rows and columns alike)."""
        return self.pixel_spacing if self.pixel_spacing is not None else DEFAULT_FOV_MM / self.size

    @property
    def table_increment(self) -> float:
        """Distance between consecutive Image Positions along the table (patient z), mm."""
        return self.slice_spacing if self.slice_spacing is not None else self.slice_thickness

    @property
    def normal_spacing(self) -> float:
        """Distance between consecutive image planes along their normal, mm: ``table_increment * cos(tilt)``."""
        return self.table_increment * math.cos(math.radians(self.tilt_deg))


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic head CT.

    Attributes:
        hu: float32 (Z, Y, X) Hounsfield units; Z in acquisition order (increasing patient z, inferior to
            superior), Y rows (anterior to posterior), X columns (patient right to left).
        mask: bool (Z, Y, X), True where the bleed is (all False without a bleed).
        labels: uint8 (Z, Y, X) :class:`Tissue` labels.
        spec: the spec it was built from.
        image_positions: float64 (Z, 3) Image Position (Patient) of each slice, mm (PS3.3 C.7.6.2.1.1).
        image_orientation: float64 (6,) Image Orientation (Patient): row then column direction cosines.
        bleed_hu: blood density used, HU (NaN without a bleed).
    """

    hu: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    spec: PhantomSpec
    image_positions: np.ndarray
    image_orientation: np.ndarray
    bleed_hu: float

    def __post_init__(self) -> None:
        shape = (self.spec.n_slices, self.spec.size, self.spec.size)
        if self.hu.dtype != np.float32 or self.hu.shape != shape:
            raise ValueError(f"hu must be float32 {shape}, got {self.hu.dtype} {self.hu.shape}")
        if self.mask.dtype != np.bool_ or self.mask.shape != shape:
            raise ValueError(f"mask must be bool {shape}, got {self.mask.dtype} {self.mask.shape}")
        if self.labels.dtype != np.uint8 or self.labels.shape != shape:
            raise ValueError(f"labels must be uint8 {shape}, got {self.labels.dtype} {self.labels.shape}")
        if self.image_positions.shape != (shape[0], 3) or self.image_orientation.shape != (6,):
            raise ValueError("image_positions must be (Z, 3) and image_orientation (6,)")

    @property
    def slice_normal(self) -> np.ndarray:
        """float64 (3,) unit normal of the image planes: row cosines x column cosines."""
        return np.cross(self.image_orientation[:3], self.image_orientation[3:])

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(row spacing, column spacing) in mm, the order of DICOM Pixel Spacing (PS3.3 10.7.1.3)."""
        return (self.spec.row_spacing, self.spec.row_spacing)


# --------------------------------------------------------------------------- geometry
class _Grid:
    """Voxel centres of the slice stack in the head frame (head centre at 0, head yawed by ``yaw``).

    Patient coordinates of voxel (k, i, j): ``x = u``, ``y = v cos(t)``, ``z = z_k - v sin(t)`` with
    ``u = (j - (X-1)/2) dx``, ``v = (i - (Y-1)/2) dx`` and ``z_k`` the patient z of slice k's centre.
    """

    def __init__(self, spec: PhantomSpec, head_offset: np.ndarray, yaw: float) -> None:
        self.n, self.size, self.dx = spec.n_slices, spec.size, spec.row_spacing
        self.tilt = math.radians(spec.tilt_deg)
        self.step = spec.table_increment
        self.z_centres = spec.z_center_mm + (np.arange(self.n) - (self.n - 1) / 2.0) * self.step  # (Z,)
        self.offset = head_offset  # head centre in patient coordinates
        self.cos_yaw, self.sin_yaw = math.cos(yaw), math.sin(yaw)

    def full(self) -> tuple[slice, slice, slice]:
        return (slice(0, self.n), slice(0, self.size), slice(0, self.size))

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame coordinates of the voxels of ``box``: x, y as (1, y, x) and z as (z, y, 1), float32 mm."""
        ks, is_, js = box
        c = (self.size - 1) / 2.0
        u = ((np.arange(js.start, js.stop) - c) * self.dx).astype(np.float32)
        v = ((np.arange(is_.start, is_.stop) - c) * self.dx).astype(np.float32)
        zk = self.z_centres[ks].astype(np.float32)
        px = u[None, :] - np.float32(self.offset[0])  # (1, X)
        py = (v * np.float32(math.cos(self.tilt)))[:, None] - np.float32(self.offset[1])  # (Y, 1)
        pz = zk[:, None, None] - (v * np.float32(math.sin(self.tilt)))[None, :, None] - np.float32(self.offset[2])
        cy, sy = np.float32(self.cos_yaw), np.float32(self.sin_yaw)
        x = (px * cy + py * sy)[None]
        y = (-px * sy + py * cy)[None]
        return x, y, pz

    def box_of(self, centre: Sequence[float] | np.ndarray, radius: float) -> tuple[slice, slice, slice] | None:
        """Index box holding every voxel within ``radius`` mm of ``centre`` (head frame); None if outside."""
        cx, cy, cz = centre
        # head frame -> patient (inverse yaw), then the affine patient -> index map, at the 8 corners
        px = cx * self.cos_yaw - cy * self.sin_yaw + self.offset[0]
        py = cx * self.sin_yaw + cy * self.cos_yaw + self.offset[1]
        pz = cz + self.offset[2]
        c = (self.size - 1) / 2.0
        ks, is_, js = [], [], []
        for sx in (-radius, radius):
            for sy in (-radius, radius):
                for sz in (-radius, radius):
                    v = (py + sy) / math.cos(self.tilt)
                    js.append((px + sx) / self.dx + c)
                    is_.append(v / self.dx + c)
                    zk = pz + sz + v * math.sin(self.tilt)
                    ks.append((zk - self.z_centres[0]) / self.step if self.n > 1 else (0.0 if abs(zk - self.z_centres[0]) <= radius else -1.0))
        box = []
        for vals, n in ((ks, self.n), (is_, self.size), (js, self.size)):
            lo, hi = max(0, math.floor(min(vals))), min(n, math.ceil(max(vals)) + 1)
            if lo >= hi:
                return None
            box.append(slice(lo, hi))
        return box[0], box[1], box[2]


def _ellipsoid(grid: _Grid, box: tuple[slice, slice, slice], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """bool array over ``box``: inside the axis-aligned (head frame) ellipsoid."""
    x, y, z = grid.coords(box)
    q = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
    return (q + ((z - centre[2]) / radii[2]) ** 2) <= 1.0


def _paint_ellipsoid(labels: np.ndarray, grid: _Grid, centre: Sequence[float], radii: Sequence[float], value: Tissue, where: Sequence[Tissue] | None = None) -> None:
    box = grid.box_of(centre, max(radii))
    if box is None:
        return
    inside = _ellipsoid(grid, box, centre, radii)
    sub = labels[box]
    if where is not None:
        inside &= np.isin(sub, np.asarray(where, dtype=np.uint8))
    sub[inside] = value


# --------------------------------------------------------------------------- the phantom
def make_phantom(spec: PhantomSpec) -> Phantom:
    """Build the head CT described by ``spec``.

    Returns:
        A :class:`Phantom`: ``hu`` float32 (Z, Y, X) HU, ``mask`` bool (Z, Y, X) bleed, ``labels`` uint8 (Z, Y, X).
        A 32 x 256 x 256 phantom takes about a tenth of a second (numpy, vectorised).
    """
    # Independent streams: the same seed gives the same anatomy and noise with or without a bleed.
    anatomy_seq, bleed_seq, noise_seq = np.random.SeedSequence(spec.seed).spawn(3)
    rng = np.random.default_rng(anatomy_seq)
    scale = float(rng.uniform(0.93, 1.05))
    semi = np.array([72.0, 90.0, 95.0]) * scale  # outer scalp ellipsoid semi-axes (x, y, z), mm
    head_offset = np.array([rng.uniform(-6, 6), rng.uniform(-6, 6), 0.0])
    yaw = math.radians(float(rng.uniform(-6, 6)))
    scalp_mm, fat = 5.0, (1.5, 3.5)
    skull_mm = float(rng.uniform(6.0, 8.0))
    vent = float(rng.uniform(0.8, 1.35))  # ventricle size (age, atrophy)
    grid = _Grid(spec, head_offset, yaw)

    shape = (spec.n_slices, spec.size, spec.size)
    labels = np.zeros(shape, dtype=np.uint8)
    x, y, z = grid.coords(grid.full())

    # Radial depth below the scalp surface along the ray from the head centre: the surface point of
    # p is p / rho, with rho the ellipsoid "radius" of p, so depth = |p| (1 / rho - 1).
    qxy = (x / semi[0]) ** 2 + (y / semi[1]) ** 2  # (1, Y, X)
    rho = np.sqrt(qxy + (z / semi[2]) ** 2)  # (Z, Y, X)
    r = np.sqrt(x * x + y * y + z * z)
    np.maximum(rho, np.float32(1e-6), out=rho)
    depth = r / rho
    depth -= r
    del r
    inner = scalp_mm + skull_mm
    d = depth
    labels[d >= 0] = Tissue.SKIN
    labels[(d >= fat[0]) & (d < fat[1])] = Tissue.FAT
    labels[(d >= scalp_mm) & (d < inner)] = Tissue.BONE_CORTEX
    labels[(d >= scalp_mm + 2.0) & (d < inner - 2.0)] = Tissue.BONE_DIPLOE
    di = d - np.float32(inner)  # depth below the inner table, mm
    del depth, d, rho
    intracranial = di >= 0
    labels[intracranial] = Tissue.WHITE
    labels[intracranial & (di < 4.5)] = Tissue.GREY
    labels[intracranial & (di < 1.5)] = Tissue.CSF

    # Gyri and sulci: a wavy angular pattern, sulci narrowing with depth, grey matter lining them.
    theta = np.arctan2(y, x)  # (1, Y, X)
    n_gyri = int(rng.integers(10, 15))
    phase, wiggle = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(1.5, 3.0))
    pattern = np.abs(np.sin(n_gyri * theta + wiggle * np.sin(np.float32(0.08) * z + 2.0 * theta + phase)))
    cortex_zone = intracranial & (di < 14.0)
    width = np.float32(0.3) * np.clip(1.0 - di / np.float32(14.0), 0.0, 1.0)
    labels[cortex_zone & (pattern < width + 0.3) & (di >= 1.5)] = Tissue.GREY
    labels[cortex_zone & (pattern < width)] = Tissue.CSF
    del pattern, width, theta

    # Interhemispheric fissure (CSF) with the falx in it, above the corpus callosum or near the surface.
    ax = np.abs(x)
    fissure = intracranial & (ax < 1.6) & ((z > 28.0) | (di < 22.0)) & (y > -semi[1] * 0.95)
    labels[fissure] = Tissue.CSF
    labels[fissure & (ax < 0.6)] = Tissue.FALX
    # Sylvian fissures: thin CSF clefts from the lateral convexity running medially towards the insula.
    sylvian = intracranial & (np.abs(y + 8.0 - 0.35 * (ax - 40.0)) < 1.4) & (ax > 30.0) & (np.abs(z - 2.0) < 12.0)
    labels[sylvian] = Tissue.CSF
    del ax, fissure, sylvian

    # Deep grey nuclei, ventricles, cisterns.
    for sx in (-1.0, 1.0):
        _paint_ellipsoid(labels, grid, (sx * 19.0, -4.0, 2.0), (9.0, 16.0, 10.0), Tissue.DEEP_GREY)  # basal ganglia
        _paint_ellipsoid(labels, grid, (sx * 9.0, 12.0, 4.0), (8.0, 11.0, 9.0), Tissue.DEEP_GREY)  # thalami
    for sx in (-1.0, 1.0):
        _paint_ellipsoid(labels, grid, (sx * 9.5 * vent, -4.0, 18.0), (4.5 * vent, 26.0, 7.0 * vent), Tissue.VENTRICLE)  # frontal horn + body
        _paint_ellipsoid(labels, grid, (sx * 17.0, 27.0, 11.0), (5.5 * vent, 10.0, 7.0 * vent), Tissue.VENTRICLE)  # atrium / occipital horn
    _paint_ellipsoid(labels, grid, (0.0, 8.0, 2.0), (1.8 * vent, 11.0, 8.0), Tissue.VENTRICLE)  # third ventricle
    _paint_ellipsoid(labels, grid, (0.0, 36.0, -34.0), (6.0, 4.0, 6.0), Tissue.VENTRICLE)  # fourth ventricle
    _paint_ellipsoid(labels, grid, (0.0, 2.0, -20.0), (20.0, 17.0, 5.5), Tissue.CSF, where=(Tissue.WHITE, Tissue.GREY))  # basal cisterns
    _paint_ellipsoid(labels, grid, (0.0, 14.0, -24.0), (11.0, 11.0, 14.0), Tissue.WHITE)  # brainstem inside the cisterns

    # Superior sagittal sinus: a midline triangle against the inner table over the posterior-superior convexity.
    sinus = intracranial & (np.abs(x) < 4.0 * (1.0 - di / 6.0)) & (y > -semi[1] * 0.6) & (z > -10.0)
    labels[sinus & np.isin(labels, (Tissue.CSF, Tissue.GREY, Tissue.FALX, Tissue.WHITE))] = Tissue.VESSEL
    del sinus, di

    if spec.calcifications:
        for sx in (-1.0, 1.0):  # choroid plexus glomus in the atria
            _paint_ellipsoid(labels, grid, (sx * 17.0, 28.0, 12.0), (2.5, 3.5, 2.5), Tissue.CALCIFICATION)
        _paint_ellipsoid(labels, grid, (0.0, 20.0, 5.0), (2.2, 2.6, 2.2), Tissue.CALCIFICATION)  # pineal

    bleed_hu = math.nan
    if spec.bleed is not None:
        bleed_rng = np.random.default_rng(bleed_seq)
        mixed = spec.bleed in ("subarachnoid", "intraventricular")
        drawn = float(bleed_rng.uniform(58.0, 72.0) if mixed else bleed_rng.uniform(60.0, 80.0))
        bleed_hu = spec.bleed_hu if spec.bleed_hu is not None else drawn
        _paint_bleed(labels, grid, bleed_rng, x, y, z, semi, inner, spec.bleed)
    del x, y, z, qxy, intracranial

    lut = np.array([TISSUE_HU[t] for t in Tissue], dtype=np.float32)
    if spec.contrast:
        lut[Tissue.VESSEL] = 200.0
        lut[Tissue.GREY] += 4.0
        lut[Tissue.WHITE] += 2.0
        lut[Tissue.DEEP_GREY] += 3.0
    if spec.bleed is not None:
        lut[Tissue.BLOOD] = bleed_hu
    hu = lut[labels]  # float32 (Z, Y, X)
    if spec.calcifications:  # calcifications vary in density (partial volume of small foci)
        calc = labels == Tissue.CALCIFICATION
        hu[calc] = rng.uniform(120.0, 320.0, size=int(calc.sum())).astype(np.float32)
    _blur_in_plane(hu)
    sigma = spec.noise_hu * math.sqrt(5.0 / spec.slice_thickness)
    if sigma > 0:
        noise = np.random.default_rng(noise_seq).standard_normal(shape, dtype=np.float32)
        noise *= np.float32(sigma)
        hu += noise
        del noise
    fov = _outside_fov(spec.size)
    hu[:, fov] = TISSUE_HU[Tissue.AIR]
    labels[:, fov] = Tissue.AIR

    mask = labels == Tissue.BLOOD
    if spec.bleed is not None and not mask.any():
        logger.warning("phantom seed %d: the %s bleed lies outside the %d slices at z %.1f..%.1f mm", spec.seed, spec.bleed, spec.n_slices, grid.z_centres[0], grid.z_centres[-1])

    iop = np.array([1.0, 0.0, 0.0, 0.0, math.cos(grid.tilt), -math.sin(grid.tilt)])
    c = (spec.size - 1) / 2.0 * spec.row_spacing
    positions = np.stack(
        [np.full(spec.n_slices, -c), np.full(spec.n_slices, -c * math.cos(grid.tilt)), grid.z_centres + c * math.sin(grid.tilt)], axis=1
    )
    return Phantom(hu=hu, mask=mask, labels=labels, spec=spec, image_positions=positions, image_orientation=iop, bleed_hu=bleed_hu)


def _paint_bleed(
    labels: np.ndarray, grid: _Grid, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray, semi: np.ndarray, inner: float, kind: str
) -> None:
    """Paint a ``kind`` bleed as Tissue.BLOOD over intracranial soft tissue/CSF (never bone or calcification).

    ``x``, ``y``: (1, Y, X) and ``z``: (Z, Y, 1) head-frame voxel coordinates, mm; ``semi``: scalp ellipsoid
    semi-axes, mm; ``inner``: depth of the inner table below the scalp surface, mm."""
    soft = (labels >= _INTRACRANIAL_MIN) & (labels != Tissue.CALCIFICATION)
    # z of the bleed centre: inside the slice stack (so the mask is seen) and inside the cerebrum
    z_lo, z_hi = float(grid.z_centres.min()), float(grid.z_centres.max())
    span = z_hi - z_lo
    zc = float(np.clip(rng.uniform(z_lo + 0.2 * span, z_hi - 0.2 * span) - grid.offset[2], -30.0, 60.0))
    if kind in ("epidural", "subdural"):
        side = float(rng.choice([-1.0, 1.0]))
        ang = float(rng.uniform(-1.1, 1.1))  # around the lateral convexity, frontal to occipital
        ring = math.sqrt(max(0.0, 1.0 - (zc / semi[2]) ** 2))
        outer_pt = np.array([side * math.cos(ang) * semi[0] * ring, math.sin(ang) * semi[1] * ring, zc])
        # the inner-table point on the same ray from the head centre (depth is radial, as in make_phantom)
        inner_pt = outer_pt * (1.0 - inner / float(np.linalg.norm(outer_pt)))
        if kind == "epidural":
            radius, thick = float(rng.uniform(18.0, 30.0)), float(rng.uniform(8.0, 15.0))
        else:
            radius, thick = float(rng.uniform(45.0, 70.0)), float(rng.uniform(4.0, 9.0))
        box = grid.box_of(inner_pt, radius + thick)
        if box is None:
            return
        bx, by, bz = grid.coords(box)
        # depth below the inner table within the box (same radial construction as in make_phantom)
        r = np.sqrt(bx * bx + by * by + bz * bz)
        rho = np.sqrt((bx / semi[0]) ** 2 + (by / semi[1]) ** 2 + (bz / semi[2]) ** 2)
        di = r / np.maximum(rho, 1e-6) - r - inner
        s2 = (bx - inner_pt[0]) ** 2 + (by - inner_pt[1]) ** 2 + (bz - inner_pt[2]) ** 2 - np.maximum(di, 0) ** 2
        frac = np.clip(1.0 - np.maximum(s2, 0) / radius**2, 0.0, 1.0)
        # epidural: parabolic (biconvex lens); subdural: square-root profile (flat, broad crescent)
        t = thick * (frac if kind == "epidural" else np.sqrt(frac))
        region = (di >= 0) & (di < t) & (frac > 0) & (side * bx > 1.5) & soft[box]
        labels[box][region] = Tissue.BLOOD
    elif kind == "intraparenchymal":
        side = float(rng.choice([-1.0, 1.0]))
        if abs(zc) < 15.0 and rng.random() < 0.5:  # deep (hypertensive): basal ganglia / thalamus
            centre = np.array([side * rng.uniform(12, 24), rng.uniform(-10, 12), zc])
        else:  # lobar: within the local half-width of the brain at this height
            ring = math.sqrt(max(0.0, 1.0 - (zc / semi[2]) ** 2))
            centre = np.array([side * rng.uniform(0.3, 0.6) * (semi[0] * ring - inner), rng.uniform(-0.45, 0.45) * (semi[1] * ring - inner), zc])
        radii = rng.uniform(6.0, 16.0, size=3)
        edema = 3.0
        box = grid.box_of(centre, float(radii.max()) * 1.3 + edema)
        if box is None:
            return
        bx, by, bz = grid.coords(box)
        dx, dy, dz = (bx - centre[0]) / radii[0], (by - centre[1]) / radii[1], (bz - centre[2]) / radii[2]
        q = np.sqrt(dx * dx + dy * dy + dz * dz)
        lobes = 1.0 + 0.18 * np.sin(3.0 * np.arctan2(dy, dx) + float(rng.uniform(0, 6.3))) * np.cos(2.0 * dz)
        sub_soft = soft[box] & (labels[box] != Tissue.VENTRICLE)
        rim = (q < lobes * (1.0 + edema / float(radii.mean()))) & sub_soft
        labels[box][rim] = Tissue.EDEMA
        labels[box][(q < lobes) & sub_soft] = Tissue.BLOOD
    elif kind == "intraventricular":
        sides = [float(rng.choice([-1.0, 1.0]))] if rng.random() < 0.5 else [-1.0, 1.0]
        level = float(rng.uniform(5.0, 20.0))  # posterior of this y (dependent part, supine) fills with blood
        for sx in sides:
            for horn, radius in (((sx * 17.0, 27.0, 11.0), 12.0), ((sx * 9.5, -4.0, 18.0), 27.0)):
                box = grid.box_of(horn, radius)
                if box is None:
                    continue
                _, by, _ = grid.coords(box)
                region = (labels[box] == Tissue.VENTRICLE) & (by > level)
                labels[box][region] = Tissue.BLOOD
        # a small clot in the body of the ventricle so that higher slices show it too
        sx = sides[0]
        _paint_ellipsoid(labels, grid, (sx * 9.5, float(rng.uniform(-10, 10)), 18.0), (4.0, 6.0, 5.0), Tissue.BLOOD, where=(Tissue.VENTRICLE,))
    elif kind == "subarachnoid":
        side = float(rng.choice([-1.0, 1.0]))
        csf_like = (labels == Tissue.CSF)
        # sylvian fissure on one side, basal cisterns, and sulci within ~35 mm of a convexity point
        sylvian = (side * x > 25.0) & (np.abs(y + 8.0 - 0.35 * (np.abs(x) - 40.0)) < 3.0) & (np.abs(z - 2.0) < 12.0)
        cisterns = ((x / 20.0) ** 2 + ((y - 2.0) / 17.0) ** 2 + ((z + 20.0) / 5.5) ** 2) <= 1.0
        ang = float(rng.uniform(-1.0, 1.0))
        pt = np.array([side * 0.8 * semi[0] * math.cos(ang), 0.8 * semi[1] * math.sin(ang), zc])
        near = ((x - pt[0]) ** 2 + (y - pt[1]) ** 2 + (z - pt[2]) ** 2) < 35.0**2
        labels[csf_like & (sylvian | cisterns | near)] = Tissue.BLOOD
    else:  # pragma: no cover - PhantomSpec validates the name
        raise ValueError(kind)


def _blur_in_plane(hu: np.ndarray) -> None:
    """In-place separable [0.15, 0.7, 0.15] blur along Y and X of a (Z, Y, X) float32 volume (edge rows kept)."""
    for axis in (1, 2):
        a = np.moveaxis(hu, axis, 0)
        centre = a.copy()
        a[1:-1] = 0.7 * centre[1:-1] + 0.15 * (centre[:-2] + centre[2:])


def _outside_fov(size: int) -> np.ndarray:
    """bool (Y, X): pixels outside the circular reconstruction field of view (inscribed circle)."""
    c = (size - 1) / 2.0
    yy, xx = np.ogrid[:size, :size]
    return (yy - c) ** 2 + (xx - c) ** 2 > (size / 2.0) ** 2


# --------------------------------------------------------------------------- DICOM
def available_transfer_syntaxes() -> tuple[UID, ...]:
    """Transfer syntaxes :func:`write_dicom_series` can write with the packages installed here."""
    from pydicom.pixels.encoders.base import get_encoder

    out = list(NATIVE_TRANSFER_SYNTAXES)
    out += [uid for uid in PYDICOM_ENCODED_TRANSFER_SYNTAXES if get_encoder(uid).is_available]
    try:
        import gdcm  # noqa: F401  (python-gdcm)

        out += list(GDCM_ENCODED_TRANSFER_SYNTAXES)
    except ImportError:
        pass
    return tuple(out)


def write_dicom_series(
    phantom: Phantom,
    folder: str | Path,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    series_description: str | None = None,
    patient_id: str = "PHANTOM-001",
    patient_name: str = "Phantom^Head",
    contrast_agent: str | None = None,
    series_number: int = 2,
    manufacturer: str = "ICH Triage Phantom",
    study_description: str = "CT HEAD",
    frame_of_reference_uid: str | None = None,
    pixel_representation: int = 1,
    bits_stored: int = 16,
    pixel_padding_value: int | None = None,
    first_instance_number: int = 1,
    study_date: str = "20250101",
    file_prefix: str = "CT",
) -> list[Path]:
    """Write ``phantom`` as one CT Image Storage series (one file per slice, PS3.3 A.3).

    Stored values are ``round(HU) + 1024`` (Rescale Intercept -1024, Slope 1, Rescale Type HU), signed or
    unsigned per ``pixel_representation`` and clipped to ``bits_stored``. The files pass dciodvfy (no errors)
    when ``modality`` is CT; any other modality is written for selection tests only (still a CT SOP Class).

    Args:
        phantom: what to write.
        folder: created if missing; files are named ``{file_prefix}{index:06d}.dcm`` in slice order.
        transfer_syntax: one of :func:`available_transfer_syntaxes` (all lossless).
        study_instance_uid, series_instance_uid, frame_of_reference_uid: None = new UIDs.
        modality: Modality (0008,0060).
        image_type: Image Type (0008,0008), e.g. ``("ORIGINAL", "PRIMARY", "LOCALIZER")``.
        series_description: None = ``"HEAD {thickness}mm"``.
        patient_id, patient_name: written as given (synthetic values by default).
        contrast_agent: Contrast/Bolus Agent (0018,0010). None = absent for an unenhanced phantom and
            "IOHEXOL 350" for ``spec.contrast``; "" writes the attribute present but empty (Type 2).
        series_number, manufacturer, study_description, study_date: as named. Writing
            ``manufacturer=dicom_io.result.PLUGIN_MANUFACTURER`` makes files the loop guard must skip.
        pixel_representation: 1 signed (int16 stored), 0 unsigned (uint16 stored).
        bits_stored: 12..16.
        pixel_padding_value: stored value written outside the circular field of view, and as Pixel
            Padding Value (0028,0120); None = no padding (those pixels hold -1000 HU like any air).
        first_instance_number: Instance Number of the first (most inferior) slice.
        file_prefix: file name prefix.

    Returns:
        The written paths, in slice order.
    """
    transfer_syntax = UID(str(transfer_syntax))
    if transfer_syntax not in NATIVE_TRANSFER_SYNTAXES + PYDICOM_ENCODED_TRANSFER_SYNTAXES + GDCM_ENCODED_TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax} ({transfer_syntax.name}); lossless syntaxes only")
    if pixel_representation not in (0, 1):
        raise ValueError(f"pixel_representation must be 0 or 1, got {pixel_representation}")
    if not 12 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 12..16, got {bits_stored}")
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if pixel_representation else (0, 2**bits_stored - 1)
    if pixel_padding_value is not None and not lo <= pixel_padding_value <= hi:
        raise ValueError(f"pixel_padding_value {pixel_padding_value} outside the stored range {lo}..{hi}")

    spec = phantom.spec
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    description = series_description if series_description is not None else f"HEAD {spec.slice_thickness:g}mm"
    if contrast_agent is None and spec.contrast:
        contrast_agent = "IOHEXOL 350"
    fov = _outside_fov(spec.size)
    dtype = np.int16 if pixel_representation else np.uint16
    paths = []
    for k in range(spec.n_slices):
        stored = np.rint(phantom.hu[k]) - RESCALE_INTERCEPT
        np.clip(stored, lo, hi, out=stored)
        stored = stored.astype(dtype)
        if pixel_padding_value is not None:
            # PS3.3 C.7.5.1.1.2: the padding value must not occur in the real image; nudge real pixels off it
            clash = (stored == pixel_padding_value) & ~fov
            stored[clash] = pixel_padding_value + 1 if pixel_padding_value < hi else pixel_padding_value - 1
            stored[fov] = pixel_padding_value
        ds = _slice_dataset(
            phantom,
            k,
            stored,
            study_uid=study_uid,
            series_uid=series_uid,
            for_uid=for_uid,
            modality=modality,
            image_type=image_type,
            description=description,
            patient_id=patient_id,
            patient_name=patient_name,
            contrast_agent=contrast_agent,
            series_number=series_number,
            manufacturer=manufacturer,
            study_description=study_description,
            pixel_representation=pixel_representation,
            bits_stored=bits_stored,
            pixel_padding_value=pixel_padding_value,
            instance_number=first_instance_number + k,
            study_date=study_date,
        )
        path = folder / f"{file_prefix}{k + 1:06d}.dcm"
        _save(ds, path, transfer_syntax)
        paths.append(path)
    logger.debug("wrote %d phantom slices (%s) to %s", len(paths), transfer_syntax.name, folder)
    return paths


def _slice_dataset(phantom: Phantom, k: int, stored: np.ndarray, **a: object) -> Dataset:
    """One CT Image Storage dataset (uncompressed pixel data), modules per PS3.3 A.3.3."""
    spec = phantom.spec
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # SOP Common (C.12.1)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = a["study_date"]
    ds.InstanceCreationTime = "120000"
    # Patient (C.7.1.1), General Study (C.7.2.1)
    ds.PatientName = a["patient_name"]
    ds.PatientID = a["patient_id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = a["study_uid"]
    ds.StudyDate = a["study_date"]
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = a["study_description"]
    # General Series (C.7.3.1)
    ds.Modality = a["modality"]
    ds.SeriesInstanceUID = a["series_uid"]
    ds.SeriesNumber = a["series_number"]
    ds.SeriesDescription = a["description"]
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.SeriesDate = a["study_date"]
    ds.SeriesTime = "120000"
    # Frame of Reference (C.7.4.1), General Equipment (C.7.5.1)
    ds.FrameOfReferenceUID = a["for_uid"]
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = a["manufacturer"]
    ds.ManufacturerModelName = "training.phantoms"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "Synthetic"
    # General Acquisition (C.7.10.1), General Image (C.7.6.1)
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = a["study_date"]
    ds.AcquisitionTime = "120000"
    ds.InstanceNumber = a["instance_number"]
    ds.ContentDate = a["study_date"]
    ds.ContentTime = "120000"
    ds.ImageType = list(a["image_type"])  # type: ignore[call-overload]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Plane (C.7.6.2): the geometry build_volume sorts and spaces by
    ds.PixelSpacing = [f"{spec.row_spacing:.6g}", f"{spec.row_spacing:.6g}"]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in phantom.image_orientation]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in phantom.image_positions[k]]
    ds.SliceThickness = f"{spec.slice_thickness:.6g}"
    ds.SpacingBetweenSlices = f"{spec.table_increment:.6g}"
    ds.SliceLocation = f"{float(phantom.image_positions[k] @ phantom.slice_normal):.4f}"
    # Image Pixel (C.7.6.3) and CT Image (C.8.2.1)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = a["bits_stored"]
    ds.HighBit = int(a["bits_stored"]) - 1  # type: ignore[call-overload]
    ds.PixelRepresentation = a["pixel_representation"]
    if a["pixel_padding_value"] is not None:
        ds.add_new(0x00280120, "SS" if a["pixel_representation"] else "US", int(a["pixel_padding_value"]))  # type: ignore[call-overload]
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.ScanOptions = "HELICAL MODE"
    ds.DataCollectionDiameter = "250"
    ds.ReconstructionDiameter = f"{spec.size * spec.row_spacing:.6g}"
    ds.DistanceSourceToDetector = "949"
    ds.DistanceSourceToPatient = "541"
    ds.GantryDetectorTilt = f"{spec.tilt_deg:.6g}"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = 1000
    ds.XRayTubeCurrent = 300
    ds.Exposure = 300
    ds.FilterType = "HEAD FILTER"
    ds.ConvolutionKernel = "STANDARD"
    ds.FocalSpots = "0.7"
    ds.RevolutionTime = 1.0
    ds.SingleCollimationWidth = 0.625
    ds.TotalCollimationWidth = 20.0
    ds.TableSpeed = 10.0
    ds.TableFeedPerRotation = 10.0
    ds.SpiralPitchFactor = 0.5
    # VOI LUT (C.11.2): brain window as the default display
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.WindowCenterWidthExplanation = "BRAIN"
    # Contrast/Bolus (C.7.6.4): present only for an enhanced acquisition (or explicitly requested)
    if a["contrast_agent"] is not None:
        ds.ContrastBolusAgent = a["contrast_agent"]
        if a["contrast_agent"]:
            ds.ContrastBolusRoute = "IV"
    ds.PixelData = stored.tobytes()
    return ds


def _save(ds: Dataset, path: Path, transfer_syntax: UID) -> None:
    if transfer_syntax in PYDICOM_ENCODED_TRANSFER_SYNTAXES:
        ds.compress(transfer_syntax)  # sets the transfer syntax, encapsulates, Lossy Image Compression stays 00
        ds.save_as(path, enforce_file_format=True)
    elif transfer_syntax in GDCM_ENCODED_TRANSFER_SYNTAXES:
        _save_with_gdcm(ds, path, transfer_syntax)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.save_as(path, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)


def _save_with_gdcm(ds: Dataset, path: Path, transfer_syntax: UID) -> None:
    """JPEG Lossless (Process 14) via GDCM's ImageChangeTransferSyntax: write native, transcode, write."""
    try:
        import gdcm
    except ImportError as exc:
        raise RuntimeError(f"writing {transfer_syntax.name} needs python-gdcm (pydicom has no JPEG Lossless encoder)") from exc
    target = {
        JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
        JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
    }[transfer_syntax]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        native = Path(tmp) / "native.dcm"
        ds.save_as(native, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(native))
        if not reader.Read():
            raise RuntimeError(f"GDCM could not read back {native}")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(target))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM could not encode {transfer_syntax.name}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(path))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"GDCM could not write {path}")


def phantom_series(spec: PhantomSpec, folder: str | Path, **kwargs: object) -> tuple[Phantom, list[Path]]:
    """Convenience: ``make_phantom(spec)`` then :func:`write_dicom_series` with ``kwargs``."""
    phantom = make_phantom(spec)
    return phantom, write_dicom_series(phantom, folder, **kwargs)  # type: ignore[arg-type]

