"""From the selected series to a Hounsfield-unit volume, and from thin slices to slabs.

- :func:`read_slice_hu`: one file to a float32 (Y, X) HU slice.
- :func:`build_volume`: a :class:`~dicom_io.series_select.SeriesInfo` to a :class:`Volume`: slices sorted
  along the slice normal by Image Position (Patient) (never by Instance Number or file name; PS3.3
  C.7.6.2.1.1), stored values rescaled to HU, padding mapped to air, duplicates dropped, gaps, uneven
  spacing and gantry tilt reported in ``warnings``.
- :func:`combine_slabs`: thin slices averaged into slabs of a configured thickness (0.625 mm -> ~5 mm).

Pixel data is decoded by pydicom's pixel data handlers: native and deflated little endian by pydicom, RLE by
pydicom or pylibjpeg-rle, JPEG Lossless and JPEG baseline by pylibjpeg-libjpeg (or GDCM), JPEG-LS by pyjpegls,
JPEG 2000 by pylibjpeg-openjpeg. Whatever fails to decode raises NotAnalyzedError UNREADABLE_PIXEL_DATA
naming the file.

HU (PS3.3 C.11.1.1.2 Modality LUT; C.8.2.1.1 for CT): ``HU = stored * RescaleSlope + RescaleIntercept``,
per slice. Pixel Padding Value (0028,0120) and Pixel Padding Range Limit (0028,0121) are compared with the
*stored* values (PS3.3 C.7.5.1.1.2) and mapped to -1000 HU (air), so the area outside the reconstruction
circle does not read as -3024 HU. MONOCHROME1 does not change HU (it is a display inversion only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_io.errors import NotAnalyzedError
from dicom_io.result import NotAnalyzedReason
from dicom_io.series_select import POSITION_TOLERANCE_MM, SeriesInfo

logger = logging.getLogger(__name__)

AIR_HU = -1000.0
"""What padding pixels become."""
GAP_FACTOR = 1.5
"""A step between neighbouring slices larger than this times the median step is a gap (missing slices)."""
UNEVEN_FRACTION = 0.1
"""Steps that differ from the median by more than this fraction (but are no gap) make the spacing uneven."""
TILT_REPORT_DEG = 0.5
"""Gantry tilt at or above this angle is reported."""
SLAB_TOLERANCE = 0.95
"""Slices at least this fraction of the slab thickness pass through as one slab each."""

_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, AttributeError, TypeError, KeyError, IndexError, EOFError, OSError, MemoryError)
"""What pydicom and its decoder plugins raise on corrupt, truncated or unsupported pixel data."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT series as a HU volume. Valid once constructed.

    Attributes:
        hu: float32 (Z, Y, X) Hounsfield units. Z follows the slice normal (row x column direction cosines), i.e.
            increasing position along it: for axial head CT in the usual orientation, inferior to superior.
            Y is the row index (along the column direction cosines), X the column index (along the row cosines).
        spacing: (z, y, x) mm: the median distance between slice planes along their normal, then Pixel Spacing
            (row spacing, column spacing; PS3.3 10.7.1.3).
        slice_positions: float64 (Z,) position of each slice along the normal, mm, strictly increasing.
        sop_instance_uids: SOP Instance UID of each slice, in Z order.
        datasets: header of each slice (no pixel data), in Z order; empty for volumes not read from DICOM.
        image_orientation: Image Orientation (Patient) of the series (6 direction cosines).
        origin: Image Position (Patient) of slice 0, mm.
        tilt_deg: angle between the slice normal and the patient z axis, degrees (gantry tilt).
        slice_thickness: Slice Thickness (0018,0050), mm, when the header gives one.
        warnings: what a reader of the result should know (dropped duplicates, gaps, uneven spacing, tilt).
        study_instance_uid, series_instance_uid: where the volume came from.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    slice_positions: np.ndarray
    sop_instance_uids: tuple[str, ...]
    datasets: tuple[Dataset, ...] = ()
    image_orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    tilt_deg: float = 0.0
    slice_thickness: float | None = None
    warnings: tuple[str, ...] = ()
    study_instance_uid: str = ""
    series_instance_uid: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.hu, np.ndarray) or self.hu.dtype != np.float32 or self.hu.ndim != 3:
            raise ValueError(f"hu must be a float32 (Z, Y, X) array, got {getattr(self.hu, 'dtype', type(self.hu))} {getattr(self.hu, 'shape', '')}")
        z = self.hu.shape[0]
        if z < 1 or min(self.hu.shape) < 1:
            raise ValueError(f"empty volume {self.hu.shape}")
        if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive (z, y, x) mm, got {self.spacing}")
        positions = np.asarray(self.slice_positions, dtype=np.float64)
        if positions.shape != (z,):
            raise ValueError(f"slice_positions must be ({z},), got {positions.shape}")
        if z > 1 and not np.all(np.diff(positions) > 0):
            raise ValueError("slice_positions must be strictly increasing")
        object.__setattr__(self, "slice_positions", positions)
        if len(self.sop_instance_uids) != z:
            raise ValueError(f"{len(self.sop_instance_uids)} SOP Instance UIDs for {z} slices")
        if len(self.datasets) not in (0, z):
            raise ValueError(f"{len(self.datasets)} datasets for {z} slices")
        if len(self.image_orientation) != 6 or len(self.origin) != 3:
            raise ValueError("image_orientation must have 6 values and origin 3")
        object.__setattr__(self, "warnings", tuple(self.warnings))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.hu.shape[0]), int(self.hu.shape[1]), int(self.hu.shape[2]))

    @property
    def normal(self) -> np.ndarray:
        """float64 (3,) unit slice normal in patient coordinates (LPS)."""
        o = np.asarray(self.image_orientation, dtype=np.float64)
        n = np.cross(o[:3], o[3:])
        return n / np.linalg.norm(n)


@dataclass(frozen=True, eq=False)
class Slabs:
    """Slices combined into slabs for classification. Valid once constructed.

    Attributes:
        hu: float32 (S, Y, X) mean HU of each slab's member slices (the volume's own array when slices pass through).
        members: for each slab, the volume slice indices it averages (consecutive, increasing, disjoint, all covered).
        z_mm: float64 (S,) slab centre along the slice normal, mm (mean of its members' positions).
        thickness_mm: float64 (S,) nominal thickness of each slab, mm (members x slice spacing, or the slice
            thickness when slices pass through).
    """

    hu: np.ndarray
    members: tuple[tuple[int, ...], ...]
    z_mm: np.ndarray
    thickness_mm: np.ndarray

    def __post_init__(self) -> None:
        if self.hu.dtype != np.float32 or self.hu.ndim != 3:
            raise ValueError(f"hu must be float32 (S, Y, X), got {self.hu.dtype} {self.hu.shape}")
        s = self.hu.shape[0]
        if len(self.members) != s or np.shape(self.z_mm) != (s,) or np.shape(self.thickness_mm) != (s,):
            raise ValueError(f"{s} slabs but {len(self.members)} member lists, {np.shape(self.z_mm)} z, {np.shape(self.thickness_mm)} thicknesses")
        flat = [i for m in self.members for i in m]
        if any(not m for m in self.members) or flat != list(range(len(flat))):
            raise ValueError("members must be non-empty runs of consecutive slice indices covering 0..N-1 in order")

    def sop_instance_uids(self, volume: Volume) -> tuple[tuple[str, ...], ...]:
        """SOP Instance UIDs of each slab's member slices."""
        return tuple(tuple(volume.sop_instance_uids[i] for i in m) for m in self.members)


# --------------------------------------------------------------------------- one slice
def read_slice_hu(path: str | Path) -> np.ndarray:
    """One single-frame grayscale DICOM image as HU.

    Args:
        path: the file.

    Returns:
        float32 (Y, X) HU: rescale applied, padding pixels -1000.

    Raises:
        NotAnalyzedError: NO_DICOM if the file is not DICOM or has no pixel data, UNREADABLE_PIXEL_DATA if the
            pixel data does not decode or is not one grayscale frame.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise NotAnalyzedError(NotAnalyzedReason.NO_DICOM, f"{path.name}: not a DICOM file") from exc
    except _DECODE_ERRORS as exc:
        raise NotAnalyzedError(NotAnalyzedReason.UNREADABLE_PIXEL_DATA, f"{path.name}: unreadable DICOM ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise NotAnalyzedError(NotAnalyzedReason.NO_DICOM, f"{path.name}: no Pixel Data (not an image)")
    _check_image_header(ds, path)
    try:
        stored = ds.pixel_array
    except _DECODE_ERRORS as exc:
        raise _unreadable(path, ds, exc) from exc
    _check_decoded(stored, ds, path)
    out = np.empty(stored.shape, dtype=np.float32)
    _stored_to_hu(stored, ds, out)
    return out


def _check_image_header(ds: Dataset, path: Path) -> None:
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if spp != 1 or frames != 1:
        raise NotAnalyzedError(
            NotAnalyzedReason.UNREADABLE_PIXEL_DATA,
            f"{path.name}: {spp} sample(s) per pixel and {frames} frame(s); a CT slice is one grayscale frame",
        )


def _check_decoded(stored: np.ndarray, ds: Dataset, path: Path) -> None:
    expected = (int(ds.Rows), int(ds.Columns))
    if stored.shape != expected or stored.dtype.kind not in "iu":
        raise NotAnalyzedError(
            NotAnalyzedReason.UNREADABLE_PIXEL_DATA,
            f"{path.name}: decoded pixel data is {stored.dtype} {stored.shape}, expected integers {expected}",
        )


def _unreadable(path: Path, ds: Dataset, exc: BaseException) -> NotAnalyzedError:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", str(syntax))
    return NotAnalyzedError(
        NotAnalyzedReason.UNREADABLE_PIXEL_DATA,
        f"{path.name}: pixel data ({name}) could not be decoded ({type(exc).__name__}: {exc})",
    )


def _stored_to_hu(stored: np.ndarray, header: Dataset, out: np.ndarray) -> None:
    """Write HU of one (Y, X) stored-value slice into ``out`` (float32, same shape), padding -> -1000."""
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    padding = _padding_mask(stored, header)
    if slope == 1.0:
        out[...] = stored
    else:
        np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
    if intercept != 0.0:
        out += np.float32(intercept)
    if padding is not None:
        out[padding] = AIR_HU


def _padding_mask(stored: np.ndarray, header: Dataset) -> np.ndarray | None:
    """bool (Y, X) of padding pixels per PS3.3 C.7.5.1.1.2, or None when the header declares no padding."""
    value = header.get("PixelPaddingValue", None)
    if value is None or value == "":
        return None
    value = _signed_if_needed(int(value), header)
    limit = header.get("PixelPaddingRangeLimit", None)
    mask: np.ndarray
    if limit is None or limit == "":
        mask = stored == value
    else:
        limit = _signed_if_needed(int(limit), header)
        lo, hi = min(value, limit), max(value, limit)
        mask = (stored >= lo) & (stored <= hi)
    return mask


def _signed_if_needed(value: int, header: Dataset) -> int:
    """A padding value read as US (ambiguous 'US or SS' VR) for signed pixel data is reinterpreted as SS."""
    if int(header.get("PixelRepresentation", 0) or 0) == 1 and value > 32767:
        return value - 65536
    return value


# --------------------------------------------------------------------------- the series
def build_volume(series: SeriesInfo) -> Volume:
    """Read and stack the slices of ``series`` into a HU volume.

    Slices are ordered by their position along the slice normal, ``dot(ImagePositionPatient, normal)`` with
    ``normal = row cosines x column cosines`` (PS3.3 C.7.6.2.1.1); Instance Number and file names are ignored.
    Each file's pixel data is decoded once, straight into the preallocated volume.

    Args:
        series: from :func:`dicom_io.series_select.scan_folder` (headers already read).

    Returns:
        The :class:`Volume`; ``warnings`` reports dropped duplicate positions, gaps (missing slices), uneven
        spacing and gantry tilt.

    Raises:
        NotAnalyzedError: NO_USABLE_SERIES for mixed image sizes, pixel spacings or orientations, or slices
            without Image Position/Orientation (Patient); UNREADABLE_PIXEL_DATA (naming the file) when pixel data
            does not decode.
    """
    uid = series.study_instance_uid
    where = f"study {uid}, series {series.series_instance_uid}"
    instances = list(series.instances)
    _check_uniform(series, where)
    head = instances[0].header
    iop = np.asarray([float(v) for v in head.ImageOrientationPatient], dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    ipp = np.asarray([[float(v) for v in i.header.ImagePositionPatient] for i in instances], dtype=np.float64)
    along = ipp @ normal

    # Sort by position; ties (duplicates) keep the (Instance Number, SOP UID) order of the series.
    order = np.argsort(along, kind="stable")
    warnings: list[str] = []
    keep: list[int] = []
    dropped: list[str] = []
    for idx in order:
        if keep and abs(along[idx] - along[keep[-1]]) < POSITION_TOLERANCE_MM:
            dropped.append(instances[idx].sop_instance_uid)
            continue
        keep.append(int(idx))
    if dropped:
        shown = ", ".join(dropped[:3]) + (f" and {len(dropped) - 3} more" if len(dropped) > 3 else "")
        warnings.append(f"{len(dropped)} duplicate slice(s) at an already present position dropped ({shown})")
    positions = along[keep]
    steps = np.diff(positions)

    thickness = _positive_float(head.get("SliceThickness", None))
    if steps.size:
        dz = float(np.median(steps))
        warnings += _spacing_warnings(steps, positions, dz)
    else:
        dz = thickness or _positive_float(head.get("SpacingBetweenSlices", None)) or 1.0
        warnings.append(f"single slice: slice spacing taken as {dz:g} mm")
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if tilt >= TILT_REPORT_DEG:
        warnings.append(f"gantry tilt {tilt:.1f} deg: slices are sheared along the table and used as acquired (not resampled)")
    row_spacing, col_spacing = (float(v) for v in head.PixelSpacing)

    rows, cols = int(head.Rows), int(head.Columns)
    hu = np.empty((len(keep), rows, cols), dtype=np.float32)
    for z, idx in enumerate(keep):
        inst = instances[idx]
        stored = _decode(inst.path, inst.header)
        _check_decoded(stored, inst.header, inst.path)
        _stored_to_hu(stored, inst.header, hu[z])
        del stored
    for w in warnings:
        logger.info("%s: %s", where, w)
    return Volume(
        hu=hu,
        spacing=(dz, row_spacing, col_spacing),
        slice_positions=positions,
        sop_instance_uids=tuple(instances[i].sop_instance_uid for i in keep),
        datasets=tuple(instances[i].header for i in keep),
        image_orientation=tuple(float(v) for v in iop),
        origin=tuple(float(v) for v in ipp[keep[0]]),  # type: ignore[arg-type]
        tilt_deg=tilt,
        slice_thickness=thickness,
        warnings=tuple(warnings),
        study_instance_uid=uid,
        series_instance_uid=series.series_instance_uid,
    )


def _check_uniform(series: SeriesInfo, where: str) -> None:
    """Every slice has geometry, and all share size, pixel spacing and orientation; else NotAnalyzedError."""
    sizes: dict[tuple[int, int], int] = {}
    spacings: dict[tuple[float, float], int] = {}
    first_iop: np.ndarray | None = None
    for inst in series.instances:
        h = inst.header
        missing = [k for k in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient") if h.get(k, None) in (None, "")]
        if missing:
            raise NotAnalyzedError(NotAnalyzedReason.NO_USABLE_SERIES, f"{where}: {inst.path.name} lacks {', '.join(missing)}", study_instance_uid=series.study_instance_uid)
        _check_image_header(h, inst.path)
        key = (int(h.Rows), int(h.Columns))
        sizes[key] = sizes.get(key, 0) + 1
        sp = (round(float(h.PixelSpacing[0]), 4), round(float(h.PixelSpacing[1]), 4))
        spacings[sp] = spacings.get(sp, 0) + 1
        iop = np.asarray([float(v) for v in h.ImageOrientationPatient], dtype=np.float64)
        if first_iop is None:
            first_iop = iop
        elif np.abs(iop - first_iop).max() > 1e-3:
            raise NotAnalyzedError(NotAnalyzedReason.NO_USABLE_SERIES, f"{where}: slices with different Image Orientation (Patient)", study_instance_uid=series.study_instance_uid)
    if len(sizes) > 1:
        found = ", ".join(f"{r}x{c} ({n} slices)" for (r, c), n in sorted(sizes.items()))
        raise NotAnalyzedError(NotAnalyzedReason.NO_USABLE_SERIES, f"{where}: mixed image sizes {found}", study_instance_uid=series.study_instance_uid)
    if len(spacings) > 1:
        found = ", ".join(f"{a:g}x{b:g} mm ({n} slices)" for (a, b), n in sorted(spacings.items()))
        raise NotAnalyzedError(NotAnalyzedReason.NO_USABLE_SERIES, f"{where}: mixed pixel spacings {found}", study_instance_uid=series.study_instance_uid)


def _spacing_warnings(steps: np.ndarray, positions: np.ndarray, dz: float) -> list[str]:
    out = []
    gaps = np.nonzero(steps > GAP_FACTOR * dz)[0]
    for g in gaps[:5]:
        missing = max(1, round(float(steps[g]) / dz) - 1)
        out.append(
            f"gap of {steps[g]:.2f} mm between slices {g} and {g + 1} (at {positions[g]:.2f} and {positions[g + 1]:.2f} mm): about {missing} missing slice(s)"
        )
    if gaps.size > 5:
        out.append(f"{gaps.size - 5} more gap(s)")
    regular = np.delete(steps, gaps)
    if regular.size and float(np.abs(regular - dz).max()) > UNEVEN_FRACTION * dz:
        out.append(f"uneven slice spacing: steps {float(regular.min()):.3f}..{float(regular.max()):.3f} mm (median {dz:.3f} mm)")
    return out


def _decode(path: Path, header: Dataset) -> np.ndarray:
    """Stored values of one file's single frame; NotAnalyzedError UNREADABLE_PIXEL_DATA naming the file."""
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    try:
        if syntax == DeflatedExplicitVRLittleEndian:
            # pixel_array(path) reads the raw stream and cannot inflate it: read the whole dataset instead
            return pydicom.dcmread(path).pixel_array
        return pixel_array(path)  # reads the file once, keeps only the decoded frame
    except _DECODE_ERRORS as exc:
        raise _unreadable(path, header, exc) from exc
    except InvalidDicomError as exc:
        raise _unreadable(path, header, exc) from exc


def _positive_float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if v > 0 and math.isfinite(v) else None


# --------------------------------------------------------------------------- slabs
def combine_slabs(volume: Volume, slab_mm: float) -> Slabs:
    """Average thin slices into slabs about ``slab_mm`` thick.

    Slices whose thickness (the larger of the slice spacing and Slice Thickness) is already at least 95 % of
    ``slab_mm``, or ``slab_mm <= 0``, pass through one slice per slab, sharing the volume's array (no copy):
    an overlapping 5 mm series reconstructed every 2.5 mm is not averaged again.

    Otherwise slices are binned by position along the normal into consecutive ``slab_mm`` intervals starting
    at the lower edge of slice 0 (so a gap leaves a slab with fewer members, never one spanning the gap's far
    side twice); a last slab thinner than half of ``slab_mm`` is merged into the one before it.

    Args:
        volume: the HU volume.
        slab_mm: target slab thickness, mm.

    Returns:
        :class:`Slabs` with ``hu`` float32 (S, Y, X) mean HU, ``members`` and ``z_mm`` (S,) centres along the normal.
    """
    dz = volume.spacing[0]
    thickness = max(dz, volume.slice_thickness or 0.0)
    positions = volume.slice_positions
    n = volume.shape[0]
    if slab_mm <= 0 or thickness >= SLAB_TOLERANCE * slab_mm:
        return Slabs(hu=volume.hu, members=tuple((i,) for i in range(n)), z_mm=positions.copy(), thickness_mm=np.full(n, thickness))
    lower_edge = positions[0] - dz / 2.0
    bins = np.floor((positions - lower_edge) / slab_mm + 1e-9).astype(np.int64)
    groups: list[list[int]] = []
    for i, b in enumerate(bins):
        if groups and bins[groups[-1][0]] == b:
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) > 1 and len(groups[-1]) * dz < slab_mm / 2.0:
        groups[-2].extend(groups.pop())
    hu = np.empty((len(groups), *volume.hu.shape[1:]), dtype=np.float32)
    for s, members in enumerate(groups):
        np.mean(volume.hu[members[0] : members[-1] + 1], axis=0, dtype=np.float32, out=hu[s])
    return Slabs(
        hu=hu,
        members=tuple(tuple(m) for m in groups),
        z_mm=np.asarray([float(np.mean(positions[m])) for m in groups]),
        thickness_mm=np.asarray([len(m) * dz for m in groups]),
    )


def volume_from_array(hu: np.ndarray, spacing: Sequence[float], *, sop_instance_uids: Sequence[str] | None = None) -> Volume:
    """A :class:`Volume` for an in-memory HU array (tests, training): axial, slices at ``spacing[0]`` mm.

    Args:
        hu: float32 (Z, Y, X) HU (converted if another float type).
        spacing: (z, y, x) mm.
        sop_instance_uids: per slice; None = placeholders ``"slice-<z>"``.
    """
    arr = np.asarray(hu, dtype=np.float32)
    z = arr.shape[0]
    uids = tuple(sop_instance_uids) if sop_instance_uids is not None else tuple(f"slice-{i}" for i in range(z))
    dz, dy, dx = (float(s) for s in spacing)
    return Volume(hu=arr, spacing=(dz, dy, dx), slice_positions=np.arange(z, dtype=np.float64) * dz, sop_instance_uids=uids, slice_thickness=dz)


__all__ = ["AIR_HU", "Slabs", "Volume", "build_volume", "combine_slabs", "read_slice_hu", "volume_from_array"]
