"""dicom_io.validate: dciodvfy / dcentvfy wrappers sort real dicom3tools reports into errors and warnings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_io import validate
from dicom_io.validate import (
    ValidatorNotFoundError,
    dcentvfy,
    dcentvfy_report,
    dciodvfy,
    dciodvfy_report,
    parse_report,
    validators_available,
)

needs_dicom3tools = pytest.mark.skipif(
    not validators_available(), reason="dicom3tools (dciodvfy, dcentvfy) not installed"
)


def _ct_slice(study_uid: str, series_uid: str, for_uid: str, index: int) -> Dataset:
    """One small CT Image Storage instance that passes dciodvfy (PS3.3 A.3 CT Image IOD)."""
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "PID-1", "19600101", "F"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, "20240102", "101112"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "Ref^Doc", "S1", "ACC1"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.BodyPartExamined = "CT", series_uid, 2, "HEAD"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""
    ds.Manufacturer, ds.InstanceNumber, ds.PatientPosition, ds.AcquisitionNumber = "ACME", index + 1, "HFS", 1
    ds.ContentDate, ds.ContentTime = "20240102", "101500"
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 5.0
    ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [-8.0, -8.0, 5.0 * index]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 16, 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.KVP = -1024, 1, 120
    ds.PixelData = np.zeros((16, 16), np.int16).tobytes()
    return ds


@pytest.fixture
def ct_pair(tmp_path: Path) -> tuple[Path, Path]:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(2):
        path = tmp_path / f"ct{i}.dcm"
        _ct_slice(study, series, frame, i).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths[0], paths[1]


def _rewrite(path: Path, **changes: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def test_parse_report_sorts_lines() -> None:
    output = (
        "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID\n"
        "CTImage\n"
        "Error - Missing attribute Type 2 Required Element=<PatientSex> Module=<Patient>\n"
        'Abort - File open for read failed - "x.dcm"\n'
        "\n"
    )
    report = parse_report("dciodvfy", output, 1)
    assert report.errors == (
        "Error - Missing attribute Type 2 Required Element=<PatientSex> Module=<Patient>",
        'Abort - File open for read failed - "x.dcm"',
    )
    assert report.warnings == (
        "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID",
    )
    assert not report.ok


def test_missing_tool_raises_clear_error(monkeypatch: pytest.MonkeyPatch, ct_pair: tuple[Path, Path]) -> None:
    monkeypatch.setattr(validate.shutil, "which", lambda name: None)
    with pytest.raises(ValidatorNotFoundError, match="dicom3tools"):
        dciodvfy(ct_pair[0])


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        dciodvfy(tmp_path / "absent.dcm")


def test_dcentvfy_needs_files() -> None:
    with pytest.raises(ValueError):
        dcentvfy([])


@needs_dicom3tools
def test_dciodvfy_valid_ct_has_no_errors(ct_pair: tuple[Path, Path]) -> None:
    report = dciodvfy_report(ct_pair[0])
    assert report.errors == ()
    assert report.returncode == 0
    assert dciodvfy(ct_pair[0]) == []


@needs_dicom3tools
def test_dciodvfy_reports_missing_type2_attribute(ct_pair: tuple[Path, Path]) -> None:
    _rewrite(ct_pair[0], PatientSex=None)
    errors = dciodvfy(ct_pair[0])
    assert any("PatientSex" in e for e in errors), errors


@needs_dicom3tools
def test_dcentvfy_consistent_study_has_no_errors(ct_pair: tuple[Path, Path]) -> None:
    assert dcentvfy(ct_pair) == []


@needs_dicom3tools
def test_dcentvfy_reports_inconsistent_patient(ct_pair: tuple[Path, Path]) -> None:
    _rewrite(ct_pair[1], PatientBirthDate="19700101")
    errors = dcentvfy(ct_pair)
    assert any("PatientBirthDate" in e for e in errors), errors


@needs_dicom3tools
def test_dcentvfy_absent_attribute_is_only_a_warning(ct_pair: tuple[Path, Path]) -> None:
    _rewrite(ct_pair[1], StudyDescription="CT HEAD")
    report = dcentvfy_report(ct_pair)
    assert report.errors == ()
    assert any("StudyDescription" in w for w in report.warnings), report.warnings
