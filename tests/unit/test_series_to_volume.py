"""dicom_io.series_to_volume: geometry-sorted HU volumes, padding, defects, transfer syntaxes, slabs."""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, generate_uid

from dicom_io.errors import NotAnalyzedError
from dicom_io.result import NotAnalyzedReason
from dicom_io.series_select import SeriesInfo, scan_folder
from dicom_io.series_to_volume import Slabs, Volume, build_volume, combine_slabs, read_slice_hu, volume_from_array
from training.phantoms import (
    GDCM_ENCODED_TRANSFER_SYNTAXES,
    NATIVE_TRANSFER_SYNTAXES,
    PYDICOM_ENCODED_TRANSFER_SYNTAXES,
    available_transfer_syntaxes,
)

SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"
CQ500 = SHARED_DATA / "cq500-dicom" / "CQ500-CT-0"


def _series(folder: Path) -> SeriesInfo:
    study = scan_folder(folder).single_study()
    assert len(study.series) == 1
    return next(iter(study.series.values()))


def _expected_hu(hu: np.ndarray) -> np.ndarray:
    return np.rint(hu).astype(np.float32)  # files store whole HU


# --------------------------------------------------------------------------- sorting
def test_slices_are_sorted_by_position_not_instance_number_or_file_name(tmp_path: Path, phantom_study) -> None:
    written = phantom_study(tmp_path / "in", n_slices=10, seed=4)
    rng = random.Random(0)
    numbers = list(range(1, 11))
    rng.shuffle(numbers)
    for path, number in zip(written.paths, numbers, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(path)
        path.rename(path.with_name(f"{generate_uid()}.dcm"))  # random file names
    volume = build_volume(_series(tmp_path / "in"))
    assert volume.shape == (10, 64, 64)
    assert np.array_equal(volume.hu, _expected_hu(written.phantom.hu))
    assert np.all(np.diff(volume.slice_positions) > 0)
    assert np.allclose(np.diff(volume.slice_positions), 5.0)
    # headers and UIDs travel with their slices
    for z, ds in enumerate(volume.datasets):
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], written.phantom.image_positions[z], atol=1e-3)
        assert ds.SOPInstanceUID == volume.sop_instance_uids[z]
    assert volume.spacing == pytest.approx((5.0, 240 / 64, 240 / 64))
    assert volume.warnings == ()


def test_descending_positions_are_reordered_along_the_normal(tmp_path: Path, phantom_study) -> None:
    # A series whose column direction points the other way has its normal reversed: z still follows the normal.
    written = phantom_study(tmp_path / "in", n_slices=6, seed=2)
    for path in written.paths:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]  # normal -z
        ds.save_as(path)
    volume = build_volume(_series(tmp_path / "in"))
    assert np.allclose(volume.normal, [0, 0, -1])
    assert np.array_equal(volume.hu, _expected_hu(written.phantom.hu[::-1]))


# --------------------------------------------------------------------------- HU
def _rewrite_pixels(path: Path, stored: np.ndarray, **attrs: object) -> None:
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.PixelData = stored.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_rescale_slope_and_intercept_give_hand_computed_hu(tmp_path: Path, phantom_study) -> None:
    path = phantom_study(tmp_path / "in", n_slices=1, size=32).paths[0]
    stored = np.array([[0, 1, 500], [1000, 1024, 3000]], dtype=np.uint16)
    _rewrite_pixels(path, stored, RescaleSlope="2", RescaleIntercept="-1000.5", BitsStored=16, HighBit=15)
    hu = read_slice_hu(path)
    assert hu.dtype == np.float32 and hu.shape == (2, 3)
    assert hu.tolist() == [[-1000.5, -998.5, -0.5], [999.5, 1047.5, 4999.5]]  # 2 * stored - 1000.5


def test_signed_12_bit_values_are_sign_extended(tmp_path: Path, phantom_study) -> None:
    path = phantom_study(tmp_path / "in", n_slices=1, size=32).paths[0]
    stored = np.array([[-2000, -1, 0, 2047]], dtype=np.int16)
    _rewrite_pixels(path, stored, BitsStored=12, HighBit=11, RescaleSlope="1", RescaleIntercept="0")
    assert read_slice_hu(path).tolist() == [[-2000.0, -1.0, 0.0, 2047.0]]


def test_padding_value_becomes_air(tmp_path: Path, phantom_study) -> None:
    written = phantom_study(tmp_path / "in", n_slices=3, pixel_padding_value=-2000)
    volume = build_volume(_series(tmp_path / "in"))
    raw = pydicom.dcmread(written.paths[0]).pixel_array
    assert (raw == -2000).sum() > 100  # the corners outside the field of view are padding ...
    assert np.all(volume.hu[0][raw == -2000] == -1000.0)  # ... and read as air, not -3024 HU
    assert volume.hu.min() >= -1100
    assert np.array_equal(volume.hu, _expected_hu(written.phantom.hu))


def test_padding_range_limit_covers_a_range_of_stored_values(tmp_path: Path, phantom_study) -> None:
    path = phantom_study(tmp_path / "in", n_slices=1, size=32).paths[0]
    stored = np.array([[0, 5, 10, 11, 1064]], dtype=np.uint16)
    _rewrite_pixels(path, stored, BitsStored=16, HighBit=15, RescaleSlope="1", RescaleIntercept="-1024")
    ds = pydicom.dcmread(path)
    ds.add_new(0x00280120, "US", 10)  # Pixel Padding Value
    ds.add_new(0x00280121, "US", 0)  # Pixel Padding Range Limit (either order, PS3.3 C.7.5.1.1.2)
    ds.save_as(path)
    assert read_slice_hu(path).tolist() == [[-1000.0, -1000.0, -1000.0, -1013.0, 40.0]]


# --------------------------------------------------------------------------- defects
def test_duplicate_positions_are_dropped_and_reported(tmp_path: Path, phantom_study) -> None:
    written = phantom_study(tmp_path / "in", n_slices=6)
    ds = pydicom.dcmread(written.paths[2])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 99
    ds.save_as(tmp_path / "in" / "resent.dcm")
    volume = build_volume(_series(tmp_path / "in"))
    assert volume.shape[0] == 6
    assert ds.SOPInstanceUID not in volume.sop_instance_uids  # the later instance of the position is dropped
    assert any("1 duplicate slice(s)" in w and ds.SOPInstanceUID in w for w in volume.warnings)
    assert np.array_equal(volume.hu, _expected_hu(written.phantom.hu))


def test_missing_slice_is_reported_as_a_gap(tmp_path: Path, phantom_study) -> None:
    written = phantom_study(tmp_path / "in", n_slices=8, slice_thickness=2.5)
    written.paths[4].unlink()
    volume = build_volume(_series(tmp_path / "in"))
    assert volume.shape[0] == 7
    assert volume.spacing[0] == pytest.approx(2.5)
    gaps = [w for w in volume.warnings if w.startswith("gap")]
    assert len(gaps) == 1 and "between slices 3 and 4" in gaps[0] and "about 1 missing" in gaps[0]


def test_uneven_spacing_is_reported(tmp_path: Path, phantom_study) -> None:
    written = phantom_study(tmp_path / "in", n_slices=6, slice_thickness=5.0)
    ds = pydicom.dcmread(written.paths[3])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 1.5]  # 6.5 mm then 3.5 mm: uneven, no gap
    ds.save_as(written.paths[3])
    volume = build_volume(_series(tmp_path / "in"))
    assert any(w.startswith("uneven slice spacing") for w in volume.warnings)
    assert not any(w.startswith("gap") for w in volume.warnings)


def test_even_spacing_reports_nothing(tmp_path: Path, phantom_study) -> None:
    phantom_study(tmp_path / "in", n_slices=6, slice_thickness=1.25)
    assert build_volume(_series(tmp_path / "in")).warnings == ()


def test_gantry_tilt_is_measured_and_reported(tmp_path: Path, phantom_study) -> None:
    written = phantom_study(tmp_path / "in", n_slices=6, tilt_deg=15.0, slice_thickness=5.0)
    volume = build_volume(_series(tmp_path / "in"))
    assert volume.tilt_deg == pytest.approx(15.0, abs=0.01)
    assert any("gantry tilt 15.0 deg" in w for w in volume.warnings)
    assert volume.spacing[0] == pytest.approx(5.0 * math.cos(math.radians(15.0)), abs=1e-3)  # along the normal
    assert np.array_equal(volume.hu, _expected_hu(written.phantom.hu))


def test_mixed_image_sizes_are_not_analyzed(tmp_path: Path, phantom_study) -> None:
    uid, series_uid = generate_uid(), generate_uid()
    phantom_study(tmp_path / "in" / "a", n_slices=4, size=64, study_instance_uid=uid, series_instance_uid=series_uid)
    phantom_study(tmp_path / "in" / "b", n_slices=4, size=48, study_instance_uid=uid, series_instance_uid=series_uid, z_center_mm=40.0, file_prefix="B")
    with pytest.raises(NotAnalyzedError) as info:
        build_volume(_series(tmp_path / "in"))
    assert info.value.reason is NotAnalyzedReason.NO_USABLE_SERIES
    assert "mixed image sizes" in info.value.message and "48x48" in info.value.message and uid in info.value.message


def test_corrupt_compressed_pixel_data_is_unreadable_and_names_the_file(tmp_path: Path, phantom_study) -> None:
    syntax = next((s for s in (JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1) if s in available_transfer_syntaxes()), None)
    if syntax is None:
        pytest.skip("no JPEG encoder installed")
    written = phantom_study(tmp_path / "in", n_slices=5, transfer_syntax=syntax)
    bad = written.paths[2]
    ds = pydicom.dcmread(bad)
    ds.PixelData = encapsulate([b"\xff\xd8\xff" + bytes(range(256)) * 4])  # a frame that is not a codestream
    ds.save_as(bad)
    with pytest.raises(NotAnalyzedError) as info:
        build_volume(_series(tmp_path / "in"))
    assert info.value.reason is NotAnalyzedReason.UNREADABLE_PIXEL_DATA
    assert bad.name in info.value.message


def test_truncated_native_pixel_data_is_unreadable(tmp_path: Path, phantom_study) -> None:
    written = phantom_study(tmp_path / "in", n_slices=5)
    ds = pydicom.dcmread(written.paths[1])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(written.paths[1])
    with pytest.raises(NotAnalyzedError) as info:
        build_volume(_series(tmp_path / "in"))
    assert info.value.reason is NotAnalyzedReason.UNREADABLE_PIXEL_DATA and written.paths[1].name in info.value.message


def test_read_slice_hu_refuses_non_dicom(tmp_path: Path) -> None:
    junk = tmp_path / "x.dcm"
    junk.write_bytes(b"hello")
    with pytest.raises(NotAnalyzedError) as info:
        read_slice_hu(junk)
    assert info.value.reason is NotAnalyzedReason.NO_DICOM


# --------------------------------------------------------------------------- transfer syntaxes
ALL_SYNTAXES = NATIVE_TRANSFER_SYNTAXES + PYDICOM_ENCODED_TRANSFER_SYNTAXES + GDCM_ENCODED_TRANSFER_SYNTAXES


@pytest.mark.parametrize("syntax", ALL_SYNTAXES, ids=[s.name for s in ALL_SYNTAXES])
def test_each_writable_transfer_syntax_round_trips(tmp_path: Path, phantom_study, syntax: str) -> None:
    if syntax not in available_transfer_syntaxes():
        pytest.skip(f"no encoder installed for {syntax}")
    written = phantom_study(tmp_path / "in", n_slices=3, transfer_syntax=syntax, pixel_padding_value=-2000, tilt_deg=5.0)
    assert pydicom.dcmread(written.paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    volume = build_volume(_series(tmp_path / "in"))
    assert np.array_equal(volume.hu, _expected_hu(written.phantom.hu))
    assert np.array_equal(read_slice_hu(written.paths[1]), volume.hu[1])


def test_unsigned_storage_round_trips(tmp_path: Path, phantom_study) -> None:
    written = phantom_study(tmp_path / "in", n_slices=3, pixel_representation=0, bits_stored=12, pixel_padding_value=0)
    volume = build_volume(_series(tmp_path / "in"))
    assert np.array_equal(volume.hu, np.maximum(_expected_hu(written.phantom.hu), -1023))  # stored 0 is padding


# --------------------------------------------------------------------------- Volume
def test_volume_checks_itself() -> None:
    good = np.zeros((3, 4, 5), dtype=np.float32)
    volume_from_array(good, (2.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="float32"):
        volume_from_array(good.astype(np.float64)[..., 0], (2.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="float32"):
        Volume(hu=good.astype(np.float64), spacing=(1, 1, 1), slice_positions=np.arange(3.0), sop_instance_uids=("a", "b", "c"))
    with pytest.raises(ValueError, match="spacing"):
        Volume(hu=good, spacing=(0.0, 1, 1), slice_positions=np.arange(3.0), sop_instance_uids=("a", "b", "c"))
    with pytest.raises(ValueError, match="increasing"):
        Volume(hu=good, spacing=(1, 1, 1), slice_positions=np.array([0.0, 2.0, 1.0]), sop_instance_uids=("a", "b", "c"))
    with pytest.raises(ValueError, match="SOP Instance UIDs"):
        Volume(hu=good, spacing=(1, 1, 1), slice_positions=np.arange(3.0), sop_instance_uids=("a", "b"))
    with pytest.raises(ValueError, match="slice_positions"):
        Volume(hu=good, spacing=(1, 1, 1), slice_positions=np.arange(4.0), sop_instance_uids=("a", "b", "c"))


# --------------------------------------------------------------------------- slabs
def _ramp_volume(n: int, dz: float, thickness: float | None = None) -> Volume:
    hu = np.stack([np.full((4, 4), 10.0 * i, dtype=np.float32) for i in range(n)])
    hu[:, 0, 0] = np.arange(n) ** 2  # a non-linear pixel: the mean is not the middle slice
    v = volume_from_array(hu, (dz, 1.0, 1.0))
    if thickness is not None:
        v = Volume(hu=v.hu, spacing=v.spacing, slice_positions=v.slice_positions, sop_instance_uids=v.sop_instance_uids, slice_thickness=thickness)
    return v


def test_thin_slices_become_slabs_of_the_mean(tmp_path: Path) -> None:
    volume = _ramp_volume(20, 1.0)
    slabs = combine_slabs(volume, 5.0)
    assert slabs.members == tuple(tuple(range(s * 5, s * 5 + 5)) for s in range(4))
    for s, members in enumerate(slabs.members):
        assert np.allclose(slabs.hu[s], volume.hu[list(members)].mean(axis=0))
        assert slabs.z_mm[s] == pytest.approx(float(np.mean(volume.slice_positions[list(members)])))
    assert slabs.hu[1, 0, 0] == pytest.approx(np.mean(np.arange(5, 10) ** 2))
    assert slabs.hu.dtype == np.float32
    assert np.allclose(slabs.thickness_mm, 5.0)
    assert slabs.sop_instance_uids(volume)[0] == volume.sop_instance_uids[:5]


def test_thin_real_spacing_gives_about_eight_slices_per_5mm_slab() -> None:
    slabs = combine_slabs(_ramp_volume(64, 0.625), 5.0)
    assert [len(m) for m in slabs.members] == [8] * 8
    flat = [i for m in slabs.members for i in m]
    assert flat == list(range(64))


def test_short_last_slab_merges_into_the_previous_one() -> None:
    slabs = combine_slabs(_ramp_volume(22, 1.0), 5.0)  # 5,5,5,5,2 -> the 2 mm remainder joins the last slab
    assert [len(m) for m in slabs.members] == [5, 5, 5, 7]
    slabs = combine_slabs(_ramp_volume(23, 1.0), 5.0)  # 3 mm remainder is at least half a slab: its own slab
    assert [len(m) for m in slabs.members] == [5, 5, 5, 5, 3]


def test_thick_slices_pass_through_without_a_copy() -> None:
    volume = _ramp_volume(6, 5.0)
    slabs = combine_slabs(volume, 5.0)
    assert slabs.members == tuple((i,) for i in range(6))
    assert slabs.hu is volume.hu
    assert np.array_equal(slabs.z_mm, volume.slice_positions)
    # overlapping reconstruction: 5 mm slices every 2.5 mm are already slab-thick
    overlapping = _ramp_volume(6, 2.5, thickness=5.0)
    assert len(combine_slabs(overlapping, 5.0).members) == 6
    # slab_mm 0 disables combination
    assert len(combine_slabs(_ramp_volume(10, 1.0), 0.0).members) == 10


def test_slabs_follow_positions_across_a_gap(tmp_path: Path, phantom_study) -> None:
    written = phantom_study(tmp_path / "in", n_slices=13, slice_thickness=1.0, size=32)
    for i in (5, 6, 7):
        written.paths[i].unlink()
    volume = build_volume(_series(tmp_path / "in"))
    slabs = combine_slabs(volume, 5.0)
    # slices at 0-4 mm | (5-7 missing) 8-9 | 10-12: the slab over the gap has fewer members, none is stretched
    assert slabs.members == ((0, 1, 2, 3, 4), (5, 6), (7, 8, 9))


def test_slabs_check_themselves() -> None:
    hu = np.zeros((2, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="members"):
        Slabs(hu=hu, members=((0,), (2,)), z_mm=np.zeros(2), thickness_mm=np.ones(2))
    with pytest.raises(ValueError):
        Slabs(hu=hu, members=((0,),), z_mm=np.zeros(1), thickness_mm=np.ones(1))


# --------------------------------------------------------------------------- the real series
@pytest.fixture(scope="module")
def cq500_volume() -> Volume:
    if not CQ500.is_dir():
        pytest.skip("shared CQ500 data not present")
    study = scan_folder(CQ500).single_study()
    (series,) = study.series.values()
    return build_volume(series)


def test_real_cq500_series_loads_sorted_with_plausible_hu(cq500_volume: Volume) -> None:
    files = sorted(CQ500.glob("*.dcm"))
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"  # JPEG Lossless SV1, decoded here
    v = cq500_volume
    assert v.shape == (len(files), int(header.Rows), int(header.Columns)) == (238, 512, 512)
    assert np.all(np.diff(v.slice_positions) > 0)
    instance_numbers = [int(ds.InstanceNumber) for ds in v.datasets]
    assert instance_numbers == sorted(instance_numbers)  # this scanner numbers slices inferior to superior
    assert v.tilt_deg == pytest.approx(float(header.GantryDetectorTilt), abs=0.1)
    assert v.spacing[0] == pytest.approx(float(header.SpacingBetweenSlices) * math.cos(math.radians(v.tilt_deg)), abs=0.01)
    mid = v.hu[v.shape[0] * 2 // 3]
    corner = float(np.median(mid[:32, :32]))
    centre = float(np.median(mid[240:272, 240:272]))
    assert -1010 <= corner <= -990  # air (and padding mapped to air)
    assert 20 <= centre <= 50  # brain
    assert v.hu.min() >= -1100  # no -3024 HU padding left
    slabs = combine_slabs(v, 5.0)
    assert 25 <= len(slabs.members) <= 32
    assert all(7 <= len(m) <= 13 for m in slabs.members)


def test_real_cq500_file_decodes_alone() -> None:
    if not CQ500.is_dir():
        pytest.skip("shared CQ500 data not present")
    path = sorted(CQ500.glob("*.dcm"))[100]
    tmp = read_slice_hu(path)
    assert tmp.shape == (512, 512) and tmp.dtype == np.float32
    assert float(tmp.min()) >= -1024 and float(tmp.max()) <= 4095 - 1024  # 16-bit stored, intercept -1024


def test_copy_of_real_series_with_shuffled_names_gives_the_same_volume(tmp_path: Path, cq500_volume: Volume) -> None:
    files = sorted(CQ500.glob("*.dcm"))[100:110]
    for i, f in enumerate(reversed(files)):
        shutil.copy(f, tmp_path / f"x{i:02d}.dcm")
    v = build_volume(_series(tmp_path))
    where = [cq500_volume.sop_instance_uids.index(uid) for uid in v.sop_instance_uids]
    assert where == sorted(where)  # same relative order as in the whole series
    assert np.array_equal(v.hu, cq500_volume.hu[where])
