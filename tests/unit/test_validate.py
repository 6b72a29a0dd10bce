"""dicom_io.validate: dciodvfy / dcentvfy wrappers sort real dicom3tools reports into errors and warnings."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from ct_sources import write_ct_series

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


@pytest.fixture
def ct_pair(tmp_path: Path) -> tuple[Path, Path]:
    first, second = write_ct_series(tmp_path, n_slices=2, size=16, pixel_value=0)
    return first, second


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
