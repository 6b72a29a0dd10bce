"""dicom_io.sr_writer: the TID 1500 report says what the result says, in the source study, valid per dicom3tools.

Sources are small CT series written with pydicom by ct_sources, and, when present, the real CQ500 headers under
shared/data. Reports are written to disk, read back with pydicom, and their content tree is searched by concept code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import ct_sources
import highdicom as hd
import numpy as np
import pydicom
import pytest
from ct_sources import CQ500, PATIENT_STUDY_KEYWORDS, read_headers
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, CTImageStorage

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
from dicom_io.sc_writer import build_secondary_capture, derived_uid
from dicom_io.sr_writer import build_structured_report
from dicom_io.validate import dcentvfy, dciodvfy, validators_available

MODEL = ModelIdentity(name="resnet50-ich", version="2.1.0", sha256="cd" * 32)
# Concept codes the report must use (PS3.16 / SNOMED CT).
ICH, PRESENT, ABSENT, NOT_EVALUATED = "1386000", "52101004", "272519000", "373121007"
PROBABILITY, THRESHOLD, IMPRESSION = "122157", "122411", "121073"
ALGORITHM_NAME, ALGORITHM_VERSION, DEVICE_MANUFACTURER = "111001", "111003", "121014"
SOURCE_OF_MEASUREMENT = "121112"

SR_SOURCE_HEADER: dict[str, object] = {
    "PatientName": "Müller^Jürgen",
    "PatientID": "PID-2",
    "PatientBirthDate": "19501231",
    "PatientSex": "M",
    "StudyDate": "20240315",
    "StudyTime": "083000",
    "StudyID": "S7",
    "AccessionNumber": "ACC7",
    "StudyDescription": "CT HEAD",
    "SeriesNumber": 3,
    "ContentDate": "20240315",
    "ContentTime": "083500",
}

needs_dicom3tools = pytest.mark.skipif(
    not validators_available(), reason="dicom3tools (dciodvfy, dcentvfy) not installed"
)


# --- sources --------------------------------------------------------------------------------------------------------


def write_ct_series(folder: Path, *, n_slices: int = 5, **overrides: object) -> list[Path]:
    """The shared small CT series (:mod:`ct_sources`) of this file's patient (a non-ASCII name) and study."""
    return ct_sources.write_ct_series(
        folder,
        n_slices=n_slices,
        pixel_spacing=0.45,
        origin=(-7.2, -7.2),
        attributes={**SR_SOURCE_HEADER, **overrides},
    )


def make_result(
    sources: Sequence[Dataset], decision: TriageDecision, key_slices: tuple[int, ...] = (2, 3)
) -> StudyResult:
    if decision is TriageDecision.NOT_ANALYZED:
        return StudyResult(
            study_instance_uid=sources[0].StudyInstanceUID,
            decision=decision,
            model=MODEL,
            threshold=0.42,
            reason=NotAnalyzedReason.TOO_FEW_SLICES,
            message="2 slices, need 8",
        )
    probability = 0.87 if decision is TriageDecision.POSITIVE else 0.12
    slices = tuple(
        SliceScore(index=i, z_mm=5.0 * i, probability=0.1 + 0.2 * i, sop_instance_uids=(ds.SOPInstanceUID,))
        for i, ds in enumerate(sources)
    )
    return StudyResult(
        study_instance_uid=sources[0].StudyInstanceUID,
        decision=decision,
        model=MODEL,
        threshold=0.42,
        probability=probability,
        slices=slices,
        key_slices=key_slices,
        aggregation="top-k mean",
    )


def key_datasets(sources: Sequence[Dataset], result: StudyResult) -> list[Dataset]:
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    return [by_uid[uid] for s in result.slices if s.index in result.key_slices for uid in s.sop_instance_uids]


def items(node: Dataset) -> Iterator[Dataset]:
    """Every content item below ``node``, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from items(item)


def named(sr: Dataset, code_value: str) -> list[Dataset]:
    return [i for i in items(sr) if i.ConceptNameCodeSequence[0].CodeValue == code_value]


def build(sources: Sequence[Dataset], result: StudyResult, referenced: Sequence[Dataset], **kwargs: object) -> Dataset:
    defaults: dict[str, object] = dict(
        series_instance_uid=derived_uid(result.study_instance_uid, MODEL.version, "sr-series"),
        series_number=9002,
        instance_number=1,
        referenced=referenced,
    )
    return build_structured_report(sources, result, **{**defaults, **kwargs})


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    return write_ct_series(tmp_path / "ct")


# --- content --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "finding_value"),
    [
        (TriageDecision.POSITIVE, PRESENT),
        (TriageDecision.NEGATIVE, ABSENT),
        (TriageDecision.NOT_ANALYZED, NOT_EVALUATED),
    ],
)
def test_report_encodes_the_result(
    ct: list[Path], tmp_path: Path, decision: TriageDecision, finding_value: str
) -> None:
    sources = read_headers(ct)
    result = make_result(sources, decision)
    referenced = key_datasets(sources, result)
    path = tmp_path / "sr.dcm"
    build(sources, result, referenced).save_as(path, enforce_file_format=True)
    sr = pydicom.dcmread(path)

    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    for keyword in PATIENT_STUDY_KEYWORDS:
        assert sr[keyword].value == sources[0][keyword].value, keyword
    assert sr.SeriesInstanceUID == derived_uid(result.study_instance_uid, MODEL.version, "sr-series")
    assert sr.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert NOT_FOR_DIAGNOSTIC_USE in sr.SeriesDescription
    assert sr.Manufacturer == PLUGIN_MANUFACTURER and sr.ManufacturerModelName == PLUGIN_MODEL_NAME
    assert any(MODEL.version in v for v in sr.SoftwareVersions)

    # Finding: the qualitative evaluation named "Intracranial hemorrhage" says present / absent / not evaluated.
    (evaluation,) = [i for i in named(sr, ICH) if i.ValueType == "CODE"]
    assert evaluation.ConceptCodeSequence[0].CodeValue == finding_value
    assert evaluation.ConceptCodeSequence[0].CodingSchemeDesignator == "SCT"
    # Algorithm and device observer.
    assert {i.TextValue for i in named(sr, ALGORITHM_NAME)} == {MODEL.name}
    assert {i.TextValue for i in named(sr, ALGORITHM_VERSION)} == {MODEL.version}
    assert [i.TextValue for i in named(sr, DEVICE_MANUFACTURER)] == [PLUGIN_MANUFACTURER]
    (impression,) = named(sr, IMPRESSION)
    assert decision.value.replace("_", " ") in impression.TextValue
    # Evidence: every analysed source instance.
    evidence = {
        i.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in sources}

    probabilities = named(sr, PROBABILITY)
    if decision is TriageDecision.NOT_ANALYZED:
        assert probabilities == [] and named(sr, SOURCE_OF_MEASUREMENT) == []
        assert "too_few_slices" in impression.TextValue and "2 slices, need 8" in impression.TextValue
        return
    # Study probability first, then one per key slice, each in UCUM "1".
    values = [float(i.MeasuredValueSequence[0].NumericValue) for i in probabilities]
    assert values[0] == pytest.approx(result.probability)
    assert values[1:] == pytest.approx([s.probability for s in result.slices if s.index in result.key_slices])
    unit = probabilities[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
    (threshold,) = named(sr, THRESHOLD)
    assert float(threshold.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.42)
    # Image references: the key slices, by SOP Class and Instance UID.
    refs = {
        (i.ReferencedSOPSequence[0].ReferencedSOPClassUID, i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in named(sr, SOURCE_OF_MEASUREMENT)
    }
    assert refs == {(CTImageStorage, ds.SOPInstanceUID) for ds in referenced}
    assert len(referenced) == 2


def test_highdicom_reads_it_back(ct: list[Path], tmp_path: Path) -> None:
    sources = read_headers(ct)
    result = make_result(sources, TriageDecision.POSITIVE)
    path = tmp_path / "sr.dcm"
    build(sources, result, key_datasets(sources, result)).save_as(path, enforce_file_format=True)
    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 3  # study + two key slices
    assert groups[0].finding_type.value == ICH
    (evaluation,) = groups[0].get_qualitative_evaluations()
    assert evaluation.value.value == PRESENT


def test_same_inputs_give_same_uids(ct: list[Path]) -> None:
    sources = read_headers(ct)
    result = make_result(sources, TriageDecision.NEGATIVE)
    first = build(sources, result, key_datasets(sources, result))
    again = build(sources, result, key_datasets(sources, result))
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert build(sources, result, [], sop_instance_uid="1.2.3.4").SOPInstanceUID == "1.2.3.4"


# --- validity -------------------------------------------------------------------------------------------------------


@needs_dicom3tools
@pytest.mark.parametrize("decision", list(TriageDecision))
def test_sc_and_sr_valid_with_source(ct: list[Path], tmp_path: Path, decision: TriageDecision) -> None:
    """The whole output set (SC + SR) passes dciodvfy, and dcentvfy over source CT + outputs has no errors."""
    sources = read_headers(ct)
    result = make_result(sources, decision)
    referenced = key_datasets(sources, result)
    key = referenced[0] if referenced else sources[0]
    sc = build_secondary_capture(
        sources,
        np.zeros((int(key.Rows), int(key.Columns), 3), np.uint8),
        result,
        series_instance_uid=derived_uid(result.study_instance_uid, "sc-series"),
        series_number=9001,
        instance_number=1,
        referenced=referenced[:1],
    )
    sr = build(sources, result, referenced)
    outputs = [tmp_path / "sc.dcm", tmp_path / "sr.dcm"]
    sc.save_as(outputs[0], enforce_file_format=True)
    sr.save_as(outputs[1], enforce_file_format=True)
    for path in outputs:
        assert dciodvfy(path) == []
    assert dcentvfy([*ct, *outputs]) == []


@needs_dicom3tools
def test_not_analyzed_from_localizer_with_sparse_header(tmp_path: Path) -> None:
    """A localizer without geometry or Type 2 values: still a valid report in the study, nothing referenced."""
    paths = write_ct_series(
        tmp_path / "loc",
        n_slices=1,
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        PatientName="ANON",
        PatientSex=None,
        StudyTime=None,
        PatientIdentityRemoved="YES",
    )
    sources = read_headers(paths)
    result = make_result(sources, TriageDecision.NOT_ANALYZED)
    path = tmp_path / "sr.dcm"
    build(sources, result, []).save_as(path, enforce_file_format=True)
    sr = pydicom.dcmread(path)
    assert sr.PatientName == "ANON" and sr.StudyInstanceUID == sources[0].StudyInstanceUID
    assert sr.PatientIdentityRemoved == "YES" and sr.DeidentificationMethod
    assert dciodvfy(path) == []
    assert dcentvfy([*paths, path]) == []


@needs_dicom3tools
def test_reference_without_geometry_is_left_out_of_image_library(ct: list[Path], tmp_path: Path) -> None:
    sources = read_headers(ct)
    result = make_result(sources, TriageDecision.POSITIVE)
    referenced = key_datasets(sources, result)
    del referenced[0].PixelSpacing  # e.g. a header the library cannot describe
    path = tmp_path / "sr.dcm"
    build(sources, result, referenced).save_as(path, enforce_file_format=True)
    sr = pydicom.dcmread(path)
    assert len(named(sr, SOURCE_OF_MEASUREMENT)) == 4  # study group 2 + one per key slice
    assert dciodvfy(path) == []


# --- invalid input: one error each ----------------------------------------------------------------------------------


def test_rejects_no_sources(ct: list[Path]) -> None:
    sources = read_headers(ct)
    with pytest.raises(ValueError):
        build([], make_result(sources, TriageDecision.POSITIVE), [])


def test_rejects_source_series_uid(ct: list[Path]) -> None:
    sources = read_headers(ct)
    with pytest.raises(ValueError, match="new series"):
        build(
            sources, make_result(sources, TriageDecision.POSITIVE), [], series_instance_uid=sources[0].SeriesInstanceUID
        )


def test_rejects_description_without_disclaimer(ct: list[Path]) -> None:
    sources = read_headers(ct)
    with pytest.raises(ValueError, match=NOT_FOR_DIAGNOSTIC_USE):
        build(sources, make_result(sources, TriageDecision.POSITIVE), [], series_description="ICH report")


def test_rejects_bad_instance_number(ct: list[Path]) -> None:
    sources = read_headers(ct)
    with pytest.raises(ValueError):
        build(sources, make_result(sources, TriageDecision.POSITIVE), [], instance_number=0)


# --- real CT headers ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CQ500.is_dir(), reason="CQ500 data not present")
@needs_dicom3tools
def test_cq500_sources(tmp_path: Path) -> None:
    paths = sorted(CQ500.glob("*.dcm"))
    sources = sorted(read_headers(paths), key=lambda ds: int(ds.InstanceNumber))
    result = make_result(sources, TriageDecision.POSITIVE, key_slices=(100, 101))
    referenced = key_datasets(sources, result)
    sr_path = tmp_path / "sr.dcm"
    build(sources, result, referenced).save_as(sr_path, enforce_file_format=True)
    sc_path = tmp_path / "sc.dcm"
    build_secondary_capture(
        sources,
        np.zeros((512, 512, 3), np.uint8),
        result,
        series_instance_uid=derived_uid("cq500", "sc"),
        series_number=9001,
        instance_number=1,
        referenced=referenced[:1],
    ).save_as(sc_path, enforce_file_format=True)
    sr = pydicom.dcmread(sr_path)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in sources[0]:
            assert sr[keyword].value == sources[0][keyword].value, keyword
    assert [i.ConceptCodeSequence[0].CodeValue for i in named(sr, ICH) if i.ValueType == "CODE"] == [PRESENT]
    assert dciodvfy(sr_path) == []
    assert dciodvfy(sc_path) == []
    assert dcentvfy([*paths, sc_path, sr_path]) == []


@needs_dicom3tools
def test_phantom_series_sources(tmp_path: Path) -> None:
    """A full synthetic head CT from training.phantoms (tilted gantry): outputs valid against all its slices."""
    phantoms = pytest.importorskip("training.phantoms")
    phantom = phantoms.make_phantom(phantoms.PhantomSpec(n_slices=12, size=64, bleed=None, tilt_deg=12.0))
    paths = phantoms.write_dicom_series(phantom, tmp_path / "ct")
    sources = sorted(read_headers(paths), key=lambda ds: int(ds.InstanceNumber))
    result = make_result(sources, TriageDecision.NEGATIVE, key_slices=(5, 6))
    referenced = key_datasets(sources, result)
    sc_path, sr_path = tmp_path / "sc.dcm", tmp_path / "sr.dcm"
    build_secondary_capture(
        sources,
        np.zeros((64, 64, 3), np.uint8),
        result,
        series_instance_uid=derived_uid(result.study_instance_uid, "sc-series"),
        series_number=9001,
        instance_number=1,
        referenced=referenced[:1],
    ).save_as(sc_path, enforce_file_format=True)
    build(sources, result, referenced).save_as(sr_path, enforce_file_format=True)
    assert pydicom.dcmread(sc_path).PatientOrientation == ["L", "P"]
    assert dciodvfy(sc_path) == [] and dciodvfy(sr_path) == []
    assert dcentvfy([*paths, sc_path, sr_path]) == []
