"""dicom_io.sc_writer: the Secondary Capture lands in the source study, valid per dciodvfy and dcentvfy.

Sources are small CT series written with pydicom by ct_sources (valid CT Image IOD), and, when present, the real
CQ500 headers under shared/data. Each object is written to disk, read back and compared, then checked with dicom3tools.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import ct_sources
import numpy as np
import pydicom
import pytest
from ct_sources import CQ500, PATIENT_STUDY_KEYWORDS, read_headers
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

from dicom_io.result import (
    NOT_FOR_DIAGNOSTIC_USE,
    PLUGIN_MANUFACTURER,
    PLUGIN_MODEL_NAME,
    ModelIdentity,
    NotAnalyzedReason,
    SliceScore,
    StudyResult,
    TriageDecision,
)
from dicom_io.sc_writer import build_secondary_capture, derived_uid, patient_orientation_from
from dicom_io.validate import dcentvfy, dcentvfy_report, dciodvfy, validators_available

MODEL = ModelIdentity(name="resnet50-ich", version="2.1.0", sha256="ab" * 32)

SC_SOURCE_HEADER: dict[str, object] = {
    "PatientAge": "064Y",
    "StudyDescription": "CT HEAD WO CONTRAST",
    "SeriesDescription": "HEAD 5mm",
}

needs_dicom3tools = pytest.mark.skipif(
    not validators_available(), reason="dicom3tools (dciodvfy, dcentvfy) not installed"
)


# --- sources --------------------------------------------------------------------------------------------------------


def write_ct_series(folder: Path, *, n_slices: int = 4, **overrides: object) -> list[Path]:
    """The shared small CT series (:mod:`ct_sources`) with this file's study and series descriptions."""
    return ct_sources.write_ct_series(folder, n_slices=n_slices, attributes={**SC_SOURCE_HEADER, **overrides})


def analysed_result(sources: Sequence[Dataset], decision: TriageDecision, probability: float) -> StudyResult:
    slices = tuple(
        SliceScore(
            index=i, z_mm=5.0 * i, probability=probability if i == 1 else 0.05, sop_instance_uids=(ds.SOPInstanceUID,)
        )
        for i, ds in enumerate(sources)
    )
    return StudyResult(
        study_instance_uid=sources[0].StudyInstanceUID,
        decision=decision,
        model=MODEL,
        threshold=0.5,
        probability=probability,
        series_instance_uid=sources[0].SeriesInstanceUID,
        slices=slices,
        key_slices=(1,),
        aggregation="max",
    )


def rgb_like(source: Dataset) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(int(source.Rows), int(source.Columns), 3), dtype=np.uint8)


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    return write_ct_series(tmp_path / "ct")


# --- derived_uid ----------------------------------------------------------------------------------------------------


def test_derived_uid_is_deterministic_valid_uuid_uid() -> None:
    a = derived_uid("1.2.3", "2.1.0", "sc", 1)
    assert a == derived_uid("1.2.3", "2.1.0", "sc", 1)
    assert a.startswith("2.25.")
    assert UID(a).is_valid and len(a) <= 64
    assert int(a.split(".")[2]) < 2**128  # PS3.5 B.2: the integer value of a 128-bit UUID


def test_derived_uid_differs_for_different_parts() -> None:
    uids = {derived_uid("1.2.3", "2.1.0", "sc", i) for i in range(100)}
    assert len(uids) == 100
    assert derived_uid("ab", "c") != derived_uid("a", "bc")
    assert derived_uid(TriageDecision.POSITIVE) == derived_uid("POSITIVE")


def test_derived_uid_needs_parts() -> None:
    with pytest.raises(ValueError):
        derived_uid()


# --- the Secondary Capture ------------------------------------------------------------------------------------------


def test_positive_sc_written_into_source_study(ct: list[Path], tmp_path: Path) -> None:
    sources = read_headers(ct)
    result = analysed_result(sources, TriageDecision.POSITIVE, 0.93)
    rgb = rgb_like(sources[1])
    series_uid = derived_uid(result.study_instance_uid, MODEL.version, "sc-series")
    sc = build_secondary_capture(
        sources,
        rgb,
        result,
        series_instance_uid=series_uid,
        series_number=9001,
        instance_number=1,
        referenced=[sources[1]],
    )
    back = pydicom.dcmread(write(sc, tmp_path / "sc.dcm"))

    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    for keyword in PATIENT_STUDY_KEYWORDS:
        assert back[keyword].value == sources[0][keyword].value, keyword
    assert back.PatientAge == "064Y"  # Patient Study module copied too
    assert back.SeriesInstanceUID == series_uid
    assert back.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert back.SOPInstanceUID not in {ds.SOPInstanceUID for ds in sources}
    assert back.SeriesNumber == 9001 and back.InstanceNumber == 1
    assert list(back.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert back.BurnedInAnnotation == "YES"
    assert back.ConversionType == "WSD"
    assert back.Modality == "OT"
    assert NOT_FOR_DIAGNOSTIC_USE in back.SeriesDescription
    assert NOT_FOR_DIAGNOSTIC_USE in back.DerivationDescription and "POSITIVE" in back.DerivationDescription
    assert back.Manufacturer == PLUGIN_MANUFACTURER
    assert back.ManufacturerModelName == PLUGIN_MODEL_NAME
    assert any(MODEL.version in v for v in back.SoftwareVersions)
    assert any(v.startswith(PLUGIN_MODEL_NAME) for v in back.SoftwareVersions)
    refs = [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in back.SourceImageSequence]
    assert refs == [(CTImageStorage, sources[1].SOPInstanceUID)]
    assert back.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3 and back.BitsAllocated == 8
    np.testing.assert_array_equal(back.pixel_array, rgb)
    assert [float(v) for v in back.PixelSpacing] == [0.5, 0.5]  # same pixel grid as the key slice
    assert list(back.PatientOrientation) == ["L", "P"]


def test_same_inputs_give_same_uids(ct: list[Path]) -> None:
    sources = read_headers(ct)
    result = analysed_result(sources, TriageDecision.NEGATIVE, 0.1)
    kwargs = dict(
        series_instance_uid=derived_uid("x", "sc-series"), series_number=9001, instance_number=2, referenced=sources[:1]
    )
    first = build_secondary_capture(sources, rgb_like(sources[0]), result, **kwargs)
    again = build_secondary_capture(sources, rgb_like(sources[0]), result, **kwargs)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    other = build_secondary_capture(sources, rgb_like(sources[0]), result, **{**kwargs, "instance_number": 3})
    assert other.SOPInstanceUID != first.SOPInstanceUID
    explicit = build_secondary_capture(sources, rgb_like(sources[0]), result, **kwargs, sop_instance_uid="1.2.3.4")
    assert explicit.SOPInstanceUID == "1.2.3.4"


@needs_dicom3tools
@pytest.mark.parametrize("decision", [TriageDecision.POSITIVE, TriageDecision.NEGATIVE])
def test_sc_passes_dciodvfy_and_dcentvfy(ct: list[Path], tmp_path: Path, decision: TriageDecision) -> None:
    sources = read_headers(ct)
    result = analysed_result(sources, decision, 0.9 if decision is TriageDecision.POSITIVE else 0.1)
    paths = []
    for n, key in enumerate(sources[1:3], start=1):  # two key images in one series: series attributes must agree
        sc = build_secondary_capture(
            sources,
            rgb_like(key),
            result,
            series_instance_uid=derived_uid("sc", decision),
            series_number=9001,
            instance_number=n,
            referenced=[key],
        )
        paths.append(write(sc, tmp_path / f"sc{n}.dcm"))
    for path in paths:
        assert dciodvfy(path) == []
    assert dcentvfy([*ct, *paths]) == []


@needs_dicom3tools
def test_not_analyzed_text_image_from_non_ct_sources(tmp_path: Path) -> None:
    """NOT_ANALYZED: sources may be any instances of the study (here an MR), nothing referenced."""
    mr_paths = write_ct_series(
        tmp_path / "mr",
        n_slices=1,
        SOPClassUID=MRImageStorage,
        Modality="MR",
        ImageType=["ORIGINAL", "PRIMARY"],
        KVP=None,
        RescaleIntercept=None,
        RescaleSlope=None,
    )
    sources = read_headers(mr_paths)
    result = StudyResult(
        study_instance_uid=sources[0].StudyInstanceUID,
        decision=TriageDecision.NOT_ANALYZED,
        model=MODEL,
        threshold=0.5,
        reason=NotAnalyzedReason.WRONG_MODALITY,
        message="no CT series in the study",
    )
    text_image = np.zeros((64, 256, 3), np.uint8)
    sc = build_secondary_capture(
        sources,
        text_image,
        result,
        series_instance_uid=derived_uid("na"),
        series_number=9001,
        instance_number=1,
        referenced=[],
    )
    path = write(sc, tmp_path / "sc.dcm")
    back = pydicom.dcmread(path)
    assert "SourceImageSequence" not in back
    assert "PixelSpacing" not in back  # a text panel has no patient geometry
    assert "not analysed" in back.SeriesDescription and NOT_FOR_DIAGNOSTIC_USE in back.SeriesDescription
    assert "wrong_modality" in back.DerivationDescription
    assert back.StudyInstanceUID == sources[0].StudyInstanceUID
    assert dciodvfy(path) == []
    assert dcentvfy([*mr_paths, path]) == []


@needs_dicom3tools
def test_unusual_source_values_copied_exactly(tmp_path: Path) -> None:
    """Caret-less names, absent Type 2 attributes and de-identified sources: copied as they are, still valid."""
    paths = write_ct_series(
        tmp_path / "ct",
        PatientName="ANON0042",
        ReferringPhysicianName="SMITH",
        PatientBirthDate=None,
        StudyID=None,
        PatientIdentityRemoved="YES",
    )
    sources = read_headers(paths)
    result = analysed_result(sources, TriageDecision.POSITIVE, 0.7)
    sc = build_secondary_capture(
        sources,
        rgb_like(sources[0]),
        result,
        series_instance_uid=derived_uid("odd"),
        series_number=9001,
        instance_number=1,
        referenced=sources[:1],
    )
    path = write(sc, tmp_path / "sc.dcm")
    back = pydicom.dcmread(path)
    assert back.PatientName == "ANON0042" and back.ReferringPhysicianName == "SMITH"
    assert back.PatientBirthDate in ("", None) and back.StudyID in ("", None)  # Type 2: present, empty
    assert back.PatientIdentityRemoved == "YES" and back.DeidentificationMethod  # PS3.3 C.7.1.1 Type 1C
    assert dciodvfy(path) == []
    report = dcentvfy_report([*paths, path])
    assert report.errors == ()


def test_orientation_from_tilted_source() -> None:
    ds = Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.965926, -0.258819]
    assert patient_orientation_from(ds) == ("L", "P")
    ds.ImageOrientationPatient = [-1, 0, 0, 0, 0, -1]
    assert patient_orientation_from(ds) == ("R", "F")
    assert patient_orientation_from(None) == ("L", "P")


# --- invalid input: one error each ----------------------------------------------------------------------------------


@pytest.fixture
def good(ct: list[Path]) -> dict[str, object]:
    sources = read_headers(ct)
    return dict(
        sources=sources,
        rgb=rgb_like(sources[0]),
        result=analysed_result(sources, TriageDecision.POSITIVE, 0.9),
        series_instance_uid=derived_uid("bad-input"),
        series_number=9001,
        instance_number=1,
        referenced=sources[:1],
    )


def test_good_inputs_build(good: dict[str, object]) -> None:
    assert build_secondary_capture(**good).BurnedInAnnotation == "YES"


def test_rejects_float_image(good: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        build_secondary_capture(**{**good, "rgb": np.zeros((8, 8, 3), np.float32)})


def test_rejects_grey_image(good: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_secondary_capture(**{**good, "rgb": np.zeros((8, 8), np.uint8)})


def test_rejects_no_sources(good: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_secondary_capture(**{**good, "sources": []})


def test_rejects_result_of_another_study(good: dict[str, object]) -> None:
    result = good["result"]
    assert isinstance(result, StudyResult)
    other = StudyResult(
        study_instance_uid="1.2.3", decision=result.decision, model=MODEL, threshold=0.5, probability=0.9
    )
    with pytest.raises(ValueError, match="1.2.3"):
        build_secondary_capture(**{**good, "result": other})


def test_rejects_source_series_uid(good: dict[str, object]) -> None:
    sources = good["sources"]
    assert isinstance(sources, list)
    with pytest.raises(ValueError, match="new series"):
        build_secondary_capture(**{**good, "series_instance_uid": sources[0].SeriesInstanceUID})


def test_rejects_description_without_disclaimer(good: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=NOT_FOR_DIAGNOSTIC_USE):
        build_secondary_capture(**good, series_description="ICH triage Grad-CAM")


def test_rejects_reference_from_another_study(good: dict[str, object], tmp_path: Path) -> None:
    stranger = read_headers(write_ct_series(tmp_path / "other", n_slices=1))
    with pytest.raises(ValueError):
        build_secondary_capture(**{**good, "referenced": stranger})


# --- real CT headers ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CQ500.is_dir(), reason="CQ500 data not present")
@needs_dicom3tools
def test_cq500_sources(tmp_path: Path) -> None:
    """Real, de-identified CT (JPEG lossless, no Study Date, caret-less name): output valid, study consistent."""
    paths = sorted(CQ500.glob("*.dcm"))
    sources = read_headers(paths)
    sources.sort(key=lambda ds: int(ds.InstanceNumber))
    result = analysed_result(sources, TriageDecision.POSITIVE, 0.8)
    key = sources[len(sources) // 2]
    sc = build_secondary_capture(
        sources,
        rgb_like(key),
        result,
        series_instance_uid=derived_uid(result.study_instance_uid, "sc"),
        series_number=9001,
        instance_number=1,
        referenced=[key],
    )
    path = write(sc, tmp_path / "sc.dcm")
    back = pydicom.dcmread(path)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in sources[0]:
            assert back[keyword].value == sources[0][keyword].value, keyword
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == key.SOPInstanceUID
    assert dciodvfy(path) == []
    assert dcentvfy([*paths, path]) == []


def test_writers_do_not_import_torch_or_the_app() -> None:
    """dicom_io knows DICOM and files, never torch (CONTRACTS.md): checked in a fresh interpreter."""
    code = (
        "import sys, dicom_io.sc_writer, dicom_io.sr_writer, dicom_io.validate; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'monai_app'}))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
