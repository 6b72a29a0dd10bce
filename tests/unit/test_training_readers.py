"""training.data readers on tiny fixtures written here: labelled picture folders, RSNA DICOM, NIfTI, phantoms."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from monai_app.pipeline.network import CLASSES
from monai_app.pipeline.windowing import WindowPreset, window_to_uint8
from training.data import Sample, read_labelled_folder, read_nifti, read_phantoms, read_rsna, split_by_group

BRAIN = WindowPreset.BRAIN.value


def gradient_picture(shape: tuple[int, int] = (40, 48), offset: int = 0) -> np.ndarray:
    """A uint8 picture whose pixels all differ along x and y, so any flip or resize shows."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy * 3 + xx * 2 + offset) % 256).astype(np.uint8)


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def labels_of(samples: list[Sample], key: str) -> np.ndarray:
    return next(s.labels for s in samples if s.key == key)


# ---------------------------------------------------------------- labelled folders (PNG/JPG + labels.csv)
@pytest.fixture
def picture_folder(tmp_path: Path) -> Path:
    root = tmp_path / "site-a"
    (root / "img").mkdir(parents=True)
    gray = gradient_picture()
    Image.fromarray(gray).save(root / "img" / "gray.png")
    Image.fromarray(np.dstack([gray] * 3)).save(root / "img" / "rgb.png")
    alpha = np.zeros_like(gray)
    alpha[:, 24:] = 255  # left half transparent: composited over black
    Image.fromarray(np.dstack([gray, gray, gray, alpha]), "RGBA").save(root / "img" / "rgba.png")
    Image.fromarray(gray).save(root / "img" / "photo.jpg", quality=95)
    mask = np.zeros_like(gray)
    mask[10:20, 5:15] = 255
    Image.fromarray(mask).save(root / "img" / "mask.png")
    zero = dict.fromkeys(CLASSES[1:], 0)
    write_csv(
        root / "labels.csv",
        [
            {
                "path": "img/gray.png",
                "hemorrhage": 1,
                **zero,
                "subdural": 1,
                "intraventricular": 1,
                "patient_id": "P1",
                "mask_path": "img/mask.png",
            },
            {"path": "img/rgb.png", "hemorrhage": 0, **zero, "patient_id": "P1", "mask_path": ""},
            {"path": "img/rgba.png", "hemorrhage": 1, **zero, "epidural": 1, "patient_id": "P2", "mask_path": ""},
            {"path": "img/photo.jpg", "hemorrhage": 0, **zero, "patient_id": "P3", "mask_path": ""},
        ],
    )
    return root


def test_labelled_folder_labels_groups_and_masks(picture_folder: Path) -> None:
    samples = read_labelled_folder(picture_folder)
    assert [s.key for s in samples] == ["img/gray.png", "img/rgb.png", "img/rgba.png", "img/photo.jpg"]
    assert {s.source for s in samples} == {"site-a"}
    assert [s.group for s in samples] == ["site-a:P1", "site-a:P1", "site-a:P2", "site-a:P3"]
    assert [s.hemorrhage for s in samples] == [1, 0, 1, 0]
    expected = np.zeros(len(CLASSES), dtype=np.float32)
    expected[[0, CLASSES.index("subdural"), CLASSES.index("intraventricular")]] = 1
    np.testing.assert_array_equal(labels_of(samples, "img/gray.png"), expected)
    np.testing.assert_array_equal(labels_of(samples, "img/rgb.png"), np.zeros(len(CLASSES)))
    assert labels_of(samples, "img/rgba.png")[CLASSES.index("epidural")] == 1
    mask = samples[0].load_mask() if samples[0].load_mask else None
    assert mask is not None and mask.dtype == bool and mask.sum() == 100 and mask[10:20, 5:15].all()
    assert all(s.load_mask is None for s in samples[1:])


def test_labelled_folder_pictures_in_every_format_become_the_same_gray(picture_folder: Path) -> None:
    gray = gradient_picture()
    pictures = {s.key: s.load() for s in read_labelled_folder(picture_folder)}
    for key, picture in pictures.items():
        assert picture.dtype == np.uint8 and picture.shape == gray.shape, key
    np.testing.assert_array_equal(pictures["img/gray.png"], gray)
    assert np.abs(pictures["img/rgb.png"].astype(int) - gray).max() <= 1  # BT.601 luma of gray RGB is gray
    rgba = pictures["img/rgba.png"].astype(int)
    assert rgba[:, :24].max() == 0 and np.abs(rgba[:, 24:] - gray[:, 24:]).max() <= 1
    assert np.abs(pictures["img/photo.jpg"].astype(int) - gray).mean() < 4  # lossy, but the same picture


def test_labelled_folder_without_subtypes_or_patients_and_with_any_column(tmp_path: Path) -> None:
    Image.fromarray(gradient_picture()).save(tmp_path / "a.png")
    Image.fromarray(gradient_picture(offset=7)).save(tmp_path / "b.png")
    write_csv(tmp_path / "labels.csv", [{"path": "a.png", "any": 1}, {"path": "b.png", "any": 0}])
    a, b = read_labelled_folder(tmp_path, source="ext")
    assert (a.group, b.group) == ("ext:a.png", "ext:b.png")  # no patient column: each slice its own group
    assert a.labels[0] == 1 and all(math.isnan(v) for v in a.labels[1:])  # positive, subtype unknown
    np.testing.assert_array_equal(b.labels, np.zeros(len(CLASSES)))  # no bleed means no subtype either


def test_labelled_folder_rejects_missing_labels_or_columns(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_labelled_folder(tmp_path)
    write_csv(tmp_path / "labels.csv", [{"file": "a.png", "hemorrhage": 1}])
    with pytest.raises(ValueError, match="path"):
        read_labelled_folder(tmp_path)


@pytest.mark.parametrize(
    "mode, suffix",
    [
        pytest.param("P", ".png", id="palette"),
        pytest.param("LA", ".png", id="gray+alpha"),
        pytest.param("CMYK", ".jpg", id="cmyk-jpeg"),
        pytest.param("1", ".png", id="bilevel"),
    ],
)
def test_labelled_folder_reads_other_picture_modes(tmp_path: Path, mode: str, suffix: str) -> None:
    gray = np.zeros((32, 32), dtype=np.uint8)
    gray[8:24, 8:24] = 255
    Image.fromarray(gray).convert(mode).save(tmp_path / f"x{suffix}")
    write_csv(tmp_path / "labels.csv", [{"path": f"x{suffix}", "hemorrhage": 0}])
    picture = read_labelled_folder(tmp_path)[0].load()
    assert picture.shape == (32, 32)
    assert picture[16, 16] > 200 and picture[0, 0] < 30


# ---------------------------------------------------------------- RSNA (DICOM + stage_2_train.csv)
def write_ct_slice(path: Path, hu: np.ndarray, patient_id: str | None, z: float) -> None:
    """A small CT Image Storage file: int16 stored values, intercept -1024, slope 1."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 5.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.PixelData = (hu.astype(np.int32) + 1024).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def ct_hu(shape: tuple[int, int] = (24, 32), bleed: bool = False) -> np.ndarray:
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[4:20, 4:28] = 30  # brain
    hu[2:4, 4:28] = 1200  # bone
    if bleed:
        hu[8:12, 10:16] = 70
    return hu


@pytest.fixture
def rsna_folder(tmp_path: Path) -> tuple[Path, Path]:
    dicom_dir = tmp_path / "stage_2_train"
    dicom_dir.mkdir()
    write_ct_slice(dicom_dir / "ID_aaa111.dcm", ct_hu(bleed=True), "ID_pat1", 0.0)
    write_ct_slice(dicom_dir / "ID_bbb222.dcm", ct_hu(), "ID_pat1", 5.0)
    write_ct_slice(dicom_dir / "ID_ccc333.dcm", ct_hu(), None, 0.0)
    write_ct_slice(dicom_dir / "ID_unlisted.dcm", ct_hu(), "ID_pat2", 0.0)  # on disk but not in the CSV: ignored
    positives = {"ID_aaa111": {"any", "subdural", "subarachnoid"}}
    rows = []
    for image_id in ("ID_aaa111", "ID_bbb222", "ID_ccc333", "ID_missing9"):  # listed but not on disk: skipped
        for subtype in ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"):
            rows.append({"ID": f"{image_id}_{subtype}", "Label": int(subtype in positives.get(image_id, set()))})
    csv_path = tmp_path / "stage_2_train.csv"
    write_csv(csv_path, rows)
    return dicom_dir, csv_path


def test_rsna_labels_and_patient_groups(rsna_folder: tuple[Path, Path]) -> None:
    samples = read_rsna(*rsna_folder)
    assert [s.key for s in samples] == ["ID_aaa111", "ID_bbb222", "ID_ccc333"]
    assert [s.group for s in samples] == ["rsna:ID_pat1", "rsna:ID_pat1", "rsna:ID_ccc333"]  # no Patient ID: own group
    assert {s.source for s in samples} == {"rsna"}
    expected = np.zeros(len(CLASSES), dtype=np.float32)
    expected[[0, CLASSES.index("subdural"), CLASSES.index("subarachnoid")]] = 1
    np.testing.assert_array_equal(samples[0].labels, expected)
    np.testing.assert_array_equal(samples[1].labels, np.zeros(len(CLASSES)))


def test_rsna_pixels_are_the_brain_window_of_hu(rsna_folder: tuple[Path, Path]) -> None:
    first = read_rsna(*rsna_folder)[0].load()
    np.testing.assert_array_equal(first, window_to_uint8(ct_hu(bleed=True).astype(np.float32), BRAIN))
    assert first[10, 12] == round(70 * 255 / 80) and first[0, 0] == 0 and first[3, 10] == 255


def test_rsna_without_any_slice_on_disk_raises(rsna_folder: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no RSNA slices"):
        read_rsna(tmp_path / "empty", rsna_folder[1])


# ---------------------------------------------------------------- NIfTI
def test_nifti_slices_labelled_from_mask(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    hu = np.full((4, 20, 24), -1000, dtype=np.float32)
    hu[:, 3:17, 3:21] = 35
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[1, 6:9, 6:9] = 1
    mask[2, 7:11, 5:8] = 1
    hu[mask > 0] = 75
    vol_path, mask_path = tmp_path / "case7.nii.gz", tmp_path / "case7_mask.nii.gz"
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.5, 0.5, 5.0))
    sitk.WriteImage(image, str(vol_path))
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(mask_path))

    samples = read_nifti(vol_path, mask_path=mask_path)
    assert [s.hemorrhage for s in samples] == [0, 1, 1, 0]
    assert [s.key for s in samples] == [f"case7.nii.gz#{z}" for z in range(4)]
    assert {s.group for s in samples} == {"nifti:case7.nii.gz"}  # one volume = one patient
    for z, s in enumerate(samples):
        np.testing.assert_array_equal(s.load(), window_to_uint8(hu[z], BRAIN))
        assert s.load_mask is not None
        np.testing.assert_array_equal(s.load_mask(), mask[z] > 0)

    assert [s.hemorrhage for s in read_nifti(vol_path, labels=[1, 0, 0, 1])] == [1, 0, 0, 1]
    with pytest.raises(ValueError):
        read_nifti(vol_path, labels=[1, 0])
    with pytest.raises(ValueError):
        read_nifti(vol_path)


# ---------------------------------------------------------------- phantoms
def test_phantom_samples_match_their_masks() -> None:
    pytest.importorskip("training.phantoms")
    samples = read_phantoms(2, seed=3, slices=6)
    assert len(samples) == 12
    assert [s.group for s in samples] == ["phantom:0"] * 6 + ["phantom:1"] * 6
    assert not any(s.hemorrhage for s in samples[:6])  # even studies are normal
    for s in samples:
        picture = s.load()
        assert s.load_mask is not None
        mask = s.load_mask()
        assert picture.dtype == np.uint8 and picture.ndim == 2 and mask.shape == picture.shape
        assert s.hemorrhage == int(mask.any())
    again = read_phantoms(2, seed=3, slices=6)
    for a, b in zip(samples, again, strict=True):
        np.testing.assert_array_equal(a.load(), b.load())


# ---------------------------------------------------------------- split
def fake_samples(groups: list[str], per_group: int = 3) -> list[Sample]:
    labels = np.zeros(len(CLASSES), dtype=np.float32)
    return [
        Sample(load=lambda: np.zeros((2, 2), np.uint8), labels=labels, group=g, source="t", key=f"{g}#{i}")
        for g in groups
        for i in range(per_group)
    ]


def test_split_by_group_keeps_groups_together_and_is_deterministic() -> None:
    groups = [f"t:P{i:03d}" for i in range(60)]
    samples = fake_samples(groups)
    train, val = split_by_group(samples, 0.25, seed=0)
    train_groups, val_groups = {s.group for s in train}, {s.group for s in val}
    assert not train_groups & val_groups and train_groups | val_groups == set(groups)
    assert len(train) + len(val) == len(samples)
    assert 5 <= len(val_groups) <= 25  # about a quarter of 60
    again_train, again_val = split_by_group(list(reversed(samples)), 0.25, seed=0)
    assert {s.key for s in again_val} == {s.key for s in val} and {s.key for s in again_train} == {s.key for s in train}
    assert {s.group for s in split_by_group(samples, 0.25, seed=1)[1]} != val_groups  # the seed matters
    # adding patients never moves the existing ones
    _, bigger_val = split_by_group(samples + fake_samples([f"t:Q{i}" for i in range(30)]), 0.25, seed=0)
    assert {s.group for s in bigger_val if s.group in set(groups)} == val_groups
    assert split_by_group(samples, 0.0)[1] == [] and split_by_group(samples, 1.0)[0] == []
