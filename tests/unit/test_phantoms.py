"""training.phantoms: anatomy in HU, bleeds with masks, geometry, and valid DICOM CT files."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLosslessSV1

from training.phantoms import (
    BLEED_SUBTYPES,
    Phantom,
    PhantomSpec,
    Tissue,
    available_transfer_syntaxes,
    make_phantom,
    write_dicom_series,
)

BRAIN = (Tissue.GREY, Tissue.WHITE, Tissue.DEEP_GREY, Tissue.CSF, Tissue.VESSEL, Tissue.FALX)


def _median(p: Phantom, tissue: Tissue) -> float:
    return float(np.median(p.hu[p.labels == tissue]))


def test_shapes_dtypes_and_geometry() -> None:
    spec = PhantomSpec(n_slices=6, size=80, slice_thickness=2.5, seed=1)
    p = make_phantom(spec)
    assert p.hu.shape == p.mask.shape == p.labels.shape == (6, 80, 80)
    assert (p.hu.dtype, p.mask.dtype, p.labels.dtype) == (np.float32, np.bool_, np.uint8)
    assert p.image_positions.shape == (6, 3)
    assert np.allclose(np.diff(p.image_positions[:, 2]), 2.5)  # contiguous slices, inferior to superior
    assert np.allclose(p.slice_normal, [0, 0, 1])
    assert p.pixel_spacing == (240.0 / 80, 240.0 / 80)
    assert not p.mask.any()


def test_same_seed_same_voxels_other_seed_other_head() -> None:
    a = make_phantom(PhantomSpec(n_slices=4, size=64, seed=7))
    b = make_phantom(PhantomSpec(n_slices=4, size=64, seed=7))
    c = make_phantom(PhantomSpec(n_slices=4, size=64, seed=8))
    assert np.array_equal(a.hu, b.hu)
    assert not np.array_equal(a.labels, c.labels)


def test_tissue_densities_are_those_of_head_ct() -> None:
    p = make_phantom(PhantomSpec(n_slices=16, size=192, seed=3))
    assert 35 <= _median(p, Tissue.GREY) <= 45
    assert 20 <= _median(p, Tissue.WHITE) <= 30
    assert _median(p, Tissue.GREY) - _median(p, Tissue.WHITE) >= 8  # visible grey/white contrast
    assert -5 <= _median(p, Tissue.VENTRICLE) <= 15
    assert 1000 <= _median(p, Tissue.BONE_CORTEX) <= 1600
    assert _median(p, Tissue.AIR) == pytest.approx(-1000, abs=5)
    calc = p.labels == Tissue.CALCIFICATION
    assert calc.any() and float(np.median(p.hu[calc])) > 100  # bright confounders ...
    assert not (calc & p.mask).any()  # ... that are not bleeds
    assert (p.labels == Tissue.CSF).sum() > 0 and (p.labels == Tissue.FALX).sum() > 0


def test_without_calcifications_there_are_none() -> None:
    p = make_phantom(PhantomSpec(n_slices=16, size=128, seed=3, calcifications=False))
    assert not (p.labels == Tissue.CALCIFICATION).any()


@pytest.mark.parametrize("subtype", BLEED_SUBTYPES)
def test_each_bleed_has_blood_density_and_a_mask_where_it_belongs(subtype: str) -> None:
    spec = PhantomSpec(n_slices=16, size=128, bleed=subtype, seed=11)
    p = make_phantom(spec)
    normal = make_phantom(PhantomSpec(n_slices=16, size=128, bleed=None, seed=11))
    assert p.mask.any(), f"{subtype}: empty mask"
    assert np.array_equal(p.mask, p.labels == Tissue.BLOOD)
    assert 55 <= p.bleed_hu <= 85
    # blood away from bone and calcification (whose in-plane blur adds partial volume) reads as the drawn density
    dense = np.isin(p.labels, (Tissue.BONE_CORTEX, Tissue.BONE_DIPLOE, Tissue.CALCIFICATION))
    near_dense = dense.copy()
    for axis in (1, 2):
        for shift in (-2, -1, 1, 2):
            near_dense |= np.roll(dense, shift, axis=axis)
    interior = p.mask & ~near_dense
    assert interior.sum() > 20
    assert 50 <= float(np.median(p.hu[interior])) <= 85  # blood, not brain (20-45) nor bone
    assert abs(float(np.median(p.hu[interior])) - p.bleed_hu) < 12  # thin collections blur with the brain beside them
    # same seed: same anatomy, the bleed replaces only what it should
    before = normal.labels[p.mask]
    if subtype == "intraventricular":
        assert np.all(before == Tissue.VENTRICLE)
    elif subtype == "subarachnoid":
        assert np.all(before == Tissue.CSF)
    else:
        assert np.all(np.isin(before, BRAIN + (Tissue.VENTRICLE,)))
    unaffected = ~p.mask & (p.labels != Tissue.EDEMA)
    assert np.array_equal(p.labels[unaffected], normal.labels[unaffected])


@pytest.mark.parametrize("subtype", ["epidural", "subdural"])
def test_extra_axial_bleeds_lie_against_the_inner_table(subtype: str) -> None:
    p = make_phantom(PhantomSpec(n_slices=16, size=128, bleed=subtype, seed=5))
    bone = np.isin(p.labels, (Tissue.BONE_CORTEX, Tissue.BONE_DIPLOE))
    touching = np.zeros_like(p.mask)
    for axis in (1, 2):
        for shift in (-1, 1):
            touching |= p.mask & np.roll(bone, shift, axis=axis)
    assert touching.sum() > 10


def test_subdural_is_a_broader_thinner_collection_than_epidural() -> None:
    def extent(subtype: str) -> tuple[int, int]:
        p = make_phantom(PhantomSpec(n_slices=24, size=128, bleed=subtype, seed=2))
        return int(p.mask.any(axis=(1, 2)).sum()), int(p.mask.sum())

    sdh_slices, _ = extent("subdural")
    edh_slices, _ = extent("epidural")
    assert sdh_slices > edh_slices


def test_training_data_interface_keeps_working() -> None:
    # training/data.py builds PhantomSpec(n_slices=..., size=128, bleed=None|subtype, seed=...) and reads .hu/.mask
    from monai_app.pipeline.network import CLASSES

    assert tuple(BLEED_SUBTYPES) == tuple(CLASSES[1:])
    for i, subtype in enumerate((None, *BLEED_SUBTYPES)):
        p = make_phantom(PhantomSpec(n_slices=12, size=128, bleed=subtype, seed=10007 + i))
        assert p.hu.shape == (12, 128, 128) and p.mask.shape == (12, 128, 128)
        assert p.mask.any() == (subtype is not None)


def test_noise_grows_for_thin_slices() -> None:
    thick = make_phantom(PhantomSpec(n_slices=4, size=128, slice_thickness=5.0, seed=1))
    thin = make_phantom(PhantomSpec(n_slices=4, size=128, slice_thickness=0.625, seed=1))

    def sd(p: Phantom) -> float:
        return float(np.std(p.hu[p.labels == Tissue.WHITE]))

    assert sd(thin) > 2 * sd(thick)


def test_tilt_rotates_orientation_and_positions_follow_the_table() -> None:
    spec = PhantomSpec(n_slices=5, size=64, tilt_deg=20.0, slice_thickness=5.0, seed=0)
    p = make_phantom(spec)
    t = math.radians(20.0)
    assert np.allclose(p.image_orientation, [1, 0, 0, 0, math.cos(t), -math.sin(t)])
    steps = np.diff(p.image_positions, axis=0)
    assert np.allclose(steps, [0, 0, 5.0])  # the table moves along z
    assert np.allclose(steps @ p.slice_normal, 5.0 * math.cos(t))  # plane distance along the normal
    assert spec.normal_spacing == pytest.approx(5.0 * math.cos(t))
    assert math.degrees(math.acos(p.slice_normal[2])) == pytest.approx(20.0)


def test_contrast_enhances_the_sinus() -> None:
    plain = make_phantom(PhantomSpec(n_slices=16, size=128, seed=4))
    enhanced = make_phantom(PhantomSpec(n_slices=16, size=128, seed=4, contrast=True))
    sinus = plain.labels == Tissue.VESSEL
    assert sinus.any()
    assert float(np.median(enhanced.hu[sinus])) > float(np.median(plain.hu[sinus])) + 80


@pytest.mark.parametrize(
    "kwargs",
    [{"bleed": "stroke"}, {"size": 8}, {"n_slices": 0}, {"slice_thickness": 0.0}, {"tilt_deg": 75.0}, {"noise_hu": -1.0}],
)
def test_invalid_specs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PhantomSpec(**kwargs)


def test_fast_enough_for_tests_and_training() -> None:
    spec = PhantomSpec(n_slices=32, size=256, bleed="subdural", seed=0)
    make_phantom(spec)  # warm-up (imports, allocator)
    start = time.perf_counter()
    make_phantom(spec)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"32x256x256 phantom took {elapsed:.2f} s"


# --------------------------------------------------------------------------- DICOM files
def test_written_files_are_ct_images_with_the_phantom_geometry(tmp_path: Path) -> None:
    p = make_phantom(PhantomSpec(n_slices=4, size=64, tilt_deg=12.0, seed=2))
    paths = write_dicom_series(p, tmp_path, pixel_padding_value=-2000)
    assert [x.name for x in paths] == [f"CT{i:06d}.dcm" for i in range(1, 5)]
    headers = [pydicom.dcmread(x) for x in paths]
    assert len({h.SeriesInstanceUID for h in headers}) == 1 and len({h.SOPInstanceUID for h in headers}) == 4
    for k, h in enumerate(headers):
        assert h.SOPClassUID == CTImageStorage and h.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.allclose([float(v) for v in h.ImagePositionPatient], p.image_positions[k], atol=1e-3)
        assert np.allclose([float(v) for v in h.ImageOrientationPatient], p.image_orientation, atol=1e-5)
        assert float(h.GantryDetectorTilt) == pytest.approx(12.0)
        assert (float(h.RescaleSlope), float(h.RescaleIntercept), h.RescaleType) == (1.0, -1024.0, "HU")
        assert h.PixelPaddingValue == -2000
        hu = h.pixel_array.astype(np.float32) + float(h.RescaleIntercept)
        real = h.pixel_array != -2000
        assert np.array_equal(hu[real], np.rint(p.hu[k])[real])
        assert "ContrastBolusAgent" not in h


def test_contrast_agent_and_overrides_are_written(tmp_path: Path) -> None:
    p = make_phantom(PhantomSpec(n_slices=2, size=32, seed=0, contrast=True))
    h = pydicom.dcmread(write_dicom_series(p, tmp_path / "a", modality="MR", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))[0])
    assert h.ContrastBolusAgent == "IOHEXOL 350" and h.Modality == "MR" and list(h.ImageType)[-1] == "LOCALIZER"
    h = pydicom.dcmread(write_dicom_series(make_phantom(PhantomSpec(n_slices=2, size=32)), tmp_path / "b", contrast_agent="")[0])
    assert "ContrastBolusAgent" in h and h.ContrastBolusAgent == ""


def test_padding_value_never_collides_with_real_pixels(tmp_path: Path) -> None:
    p = make_phantom(PhantomSpec(n_slices=2, size=64, slice_thickness=0.625, seed=0))  # noisy air reaches -1024 HU
    paths = write_dicom_series(p, tmp_path, pixel_representation=0, bits_stored=12, pixel_padding_value=0)
    for k, path in enumerate(paths):
        stored = pydicom.dcmread(path).pixel_array
        outside = stored == 0
        assert outside.any()
        assert np.all(p.hu[k][outside] == -1000)  # only the out-of-field pixels carry the padding value


def test_unsupported_transfer_syntax_is_refused(tmp_path: Path) -> None:
    p = make_phantom(PhantomSpec(n_slices=1, size=32))
    with pytest.raises(ValueError, match="unsupported transfer syntax"):
        write_dicom_series(p, tmp_path, transfer_syntax="1.2.840.10008.1.2.4.50")  # JPEG baseline: lossy


def _dciodvfy_errors(dciodvfy: str, path: Path) -> list[str]:
    run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.lstrip().startswith("Error")]


@pytest.mark.parametrize(
    "spec_kwargs, write_kwargs",
    [
        ({}, {}),
        ({"tilt_deg": 15.0, "bleed": "subdural"}, {"pixel_padding_value": -2000}),
        ({"slice_thickness": 0.625}, {"pixel_representation": 0, "bits_stored": 12, "pixel_padding_value": 0}),
        ({"contrast": True}, {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}),
        ({}, {"transfer_syntax": JPEGLosslessSV1}),
    ],
    ids=["default", "tilt-padding", "unsigned-12bit", "contrast-localizer", "jpeg-lossless"],
)
def test_written_files_pass_dciodvfy(tmp_path: Path, dciodvfy: str, spec_kwargs: dict, write_kwargs: dict) -> None:
    if write_kwargs.get("transfer_syntax") not in (None, *available_transfer_syntaxes()):
        pytest.skip(f"no encoder for {write_kwargs['transfer_syntax']}")
    p = make_phantom(PhantomSpec(n_slices=2, size=64, seed=3, **spec_kwargs))
    for path in write_dicom_series(p, tmp_path, **write_kwargs):
        assert _dciodvfy_errors(dciodvfy, path) == []


def test_dciodvfy_check_can_fail(tmp_path: Path, dciodvfy: str) -> None:
    # the validation above means something: a file missing a Type 1 attribute is reported
    path = write_dicom_series(make_phantom(PhantomSpec(n_slices=1, size=32)), tmp_path)[0]
    ds = pydicom.dcmread(path)
    del ds.ImageOrientationPatient
    ds.save_as(path)
    assert _dciodvfy_errors(dciodvfy, path)
