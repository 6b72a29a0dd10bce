"""Structured Report writer: the study result as a TID 1500 Measurement Report in the source study.

A Comprehensive SR (PS3.3 A.35.3) built with highdicom. Comprehensive rather than Comprehensive 3D: the report holds
no 3D coordinates, and the Comprehensive SR Storage class is the one archives and viewers accept most widely.
Content tree (PS3.16 TID 1500 Measurement Report)::

    CONTAINER (126000, DCM, "Imaging Measurement Report")
      HAS CONCEPT MOD  Language (TID 1204)
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID / Name / Manufacturer / Model (TID 1002, 1004)
      HAS CONCEPT MOD  Procedure reported = (303653007, SCT, "Computed tomography of head")
      CONTAINS         Image Library (TID 1600): the referenced source slices
      CONTAINS         Imaging Measurements
        Measurement Group (TID 1501), study level:
          Tracking Identifier + UID (TID 4108), Finding = (1386000, SCT, "Intracranial hemorrhage"),
          Algorithm Name / Version / Manufacturer / Parameters (TID 4019),
          Probability (122157, DCM) in UCUM "1", Threshold Value (122411, DCM) in UCUM "1"  (analysed studies),
          Intracranial hemorrhage = Present (52101004, SCT) / Absent (272519000, SCT) / Not Evaluated (373121007, SCT),
          Source of Measurement: the referenced source slices
        Measurement Group (TID 1501) per key slice: its Probability, Source of Measurement: that slice's instances
      CONTAINS         Qualitative Evaluations (C0034375, UMLS)
        TEXT Impression (121073, DCM): decision, probability, threshold / reason not analysed
        TEXT Comment (121106, DCM): "NOT FOR DIAGNOSTIC USE" disclaimer

Completion Flag COMPLETE, Verification Flag UNVERIFIED (no person has verified it; PS3.3 C.17.2), Preliminary Flag
PRELIMINARY (a triage aid awaiting the radiologist's read). Every instance in ``sources`` is listed in the Current
Requested Procedure Evidence Sequence (PS3.3 C.17.2.2).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_io.result import (
    NOT_FOR_DIAGNOSTIC_USE,
    PLUGIN_MANUFACTURER,
    PLUGIN_MODEL_NAME,
    SliceScore,
    StudyResult,
    TriageDecision,
)
from dicom_io.sc_writer import (
    acquisition_equipment,
    check_new_series,
    check_series_description,
    check_sources,
    copy_patient_and_study,
    decision_summary,
    derived_uid,
    software_versions,
    unique_by_sop_instance,
)

logger = logging.getLogger(__name__)

SR_SERIES_DESCRIPTION = f"ICH triage report - {NOT_FOR_DIAGNOSTIC_USE}"

FINDING_ICH: Code = codes.SCT.IntracranialHemorrhage
"""(1386000, SCT, "Intracranial hemorrhage"): the finding every report is about."""
PRESENT: Code = codes.SCT.Present
ABSENT: Code = codes.SCT.Absent
NOT_EVALUATED: Code = codes.SCT.NotEvaluated
PROBABILITY: Code = codes.DCM.Probability
THRESHOLD: Code = codes.DCM.ThresholdValue
UNITLESS: Code = codes.UCUM.NoUnits
PROCEDURE_CT_HEAD: Code = codes.SCT.ComputedTomographyOfHead
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
"""PS3.16 TID 1500 row 12: the container for evaluations of the whole report."""

_FINDING_VALUE: dict[TriageDecision, Code] = {
    TriageDecision.POSITIVE: PRESENT,
    TriageDecision.NEGATIVE: ABSENT,
    TriageDecision.NOT_ANALYZED: NOT_EVALUATED,
}

# Patient/study attributes highdicom's SR constructor reads (and re-formats) from the first evidence dataset.
_STRICT_REFERENCE_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _construction_reference(source: Dataset) -> Dataset:
    """A stand-in for ``source`` (same UIDs, blank patient/study values) for highdicom's SR constructor.

    ``highdicom.sr`` reads Patient's Birth Date, Sex, Study Date/Time ... from the first evidence dataset with
    attribute access and enum/DA/TM parsing, so a source that lacks one (Type 2 attributes may be absent in real
    data) or carries an unusual value would fail the whole report. The real values are copied element by element
    afterwards (:func:`dicom_io.sc_writer.copy_patient_and_study`).
    """
    stand_in = Dataset()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "SpecificCharacterSet"):
        if keyword in source:
            setattr(stand_in, keyword, source[keyword].value)
    for keyword in _STRICT_REFERENCE_KEYWORDS:
        setattr(stand_in, keyword, None)
    return stand_in


def _can_describe(image: Dataset) -> bool:
    """Whether highdicom can build a TID 1602 Image Library entry for ``image`` (it needs its geometry)."""
    try:
        hd.sr.ImageLibraryEntryDescriptors(image)
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    return True


def _source_images(datasets: Sequence[Dataset]) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID) for ds in datasets]


def _algorithm(result: StudyResult) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification: the model, and what fixes its output (threshold, aggregation, weights)."""
    parameters = [f"operating threshold {result.threshold:g}"]
    if result.aggregation:
        parameters.append(f"aggregation {result.aggregation}")
    if result.model.sha256:
        parameters.append(f"weights sha256 {result.model.sha256}")
    return hd.sr.AlgorithmIdentification(
        name=result.model.name,
        version=result.model.version,
        manufacturer=PLUGIN_MANUFACTURER,
        parameters=parameters,
    )


def _unitless(name: Code, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=UNITLESS)


def _study_group(result: StudyResult, referenced: Sequence[Dataset]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for the whole study: probability, threshold and the present/absent/not evaluated finding."""
    measurements: list[hd.sr.Measurement] = []
    if result.decision is not TriageDecision.NOT_ANALYZED and result.probability is not None:
        measurements.append(_unitless(PROBABILITY, result.probability))
        measurements.append(_unitless(THRESHOLD, result.threshold))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(result.study_instance_uid, result.model.version, "sr-tracking", "study"),
            identifier="ICH triage study result",
        ),
        finding_type=FINDING_ICH,
        algorithm_id=_algorithm(result),
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(FINDING_ICH, _FINDING_VALUE[result.decision])],
        source_images=_source_images(referenced) or None,
    )


def _key_slice_groups(
    result: StudyResult, referenced: Sequence[Dataset]
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One TID 1501 group per key slice whose source instances are among ``referenced``: its probability."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in referenced}
    slices: dict[int, SliceScore] = {s.index: s for s in result.slices}
    groups = []
    for index in result.key_slices:
        score = slices.get(index)
        if score is None:
            logger.warning("study %s: key slice %d has no slice score; not reported", result.study_instance_uid, index)
            continue
        images = [by_uid[uid] for uid in score.sop_instance_uids if uid in by_uid]
        if not images:
            logger.warning(
                "study %s: key slice %d is not among the referenced images", result.study_instance_uid, index
            )
            continue
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(result.study_instance_uid, result.model.version, "sr-tracking", "slice", index),
                    identifier=f"ICH triage key slice {index} at {score.z_mm:.1f} mm",
                ),
                finding_type=FINDING_ICH,
                algorithm_id=_algorithm(result),
                measurements=[_unitless(PROBABILITY, score.probability)],
                source_images=_source_images(images),
            )
        )
    return groups


def _qualitative_evaluations(result: StudyResult) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: the decision in words, and the disclaimer."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Impression,
                value=decision_summary(result),
                relationship_type=RelationshipTypeValues.CONTAINS,
            ),
            hd.sr.TextContentItem(
                name=codes.DCM.Comment,
                value=f"{NOT_FOR_DIAGNOSTIC_USE}: research triage aid, not a medical device; "
                "the radiologist's read of the source images decides.",
                relationship_type=RelationshipTypeValues.CONTAINS,
            ),
        ]
    )
    return container


def build_structured_report(
    sources: Sequence[Dataset],
    result: StudyResult,
    *,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    referenced: Sequence[Dataset],
    sop_instance_uid: str | None = None,
    series_description: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """Encode a study result as a TID 1500 Comprehensive SR in the source study (PS3.3 A.35.3, PS3.16 TID 1500).

    Args:
        sources: Headers (pixels not needed) of the analysed series; the first supplies the patient and study
            attributes, all are listed as evidence. For NOT_ANALYZED, any instances of the study.
        result: The study result; any decision.
        series_instance_uid: UID of the new output series (not a source series; not the SC's series either).
        series_number: Series Number of the output series (>= 1).
        instance_number: Instance Number of the report in that series (>= 1).
        referenced: Headers of the source images the report points at (key slices at least); may be empty.
        sop_instance_uid: SOP Instance UID; default ``derived_uid(series_instance_uid, "sr", instance_number)``.
        series_description: Defaults to :data:`SR_SERIES_DESCRIPTION`; must contain "NOT FOR DIAGNOSTIC USE".

    Returns:
        The SR dataset (a :class:`highdicom.sr.ComprehensiveSR`), with file meta, ready for ``save_as``.

    Raises:
        ValueError: sources empty or from another study, a source series UID reused, bad numbers, or a series
            description without the disclaimer.
    """
    reference = check_sources(sources, result, referenced)
    check_new_series(
        series_instance_uid, [*sources, *referenced], series_number=series_number, instance_number=instance_number
    )
    series_description = check_series_description(series_description or SR_SERIES_DESCRIPTION)
    referenced = unique_by_sop_instance(referenced)
    sop_instance_uid = sop_instance_uid or derived_uid(series_instance_uid, "sr", instance_number)

    library = [ds for ds in referenced if _can_describe(ds)]
    if len(library) < len(referenced):
        logger.info(
            "study %s: %d referenced instances lack the geometry for the image library",
            result.study_instance_uid,
            len(referenced) - len(library),
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device-observer", PLUGIN_MODEL_NAME, result.model.name, result.model.version),
            name=f"{PLUGIN_MODEL_NAME} {result.model.name} {result.model.version}",
            manufacturer_name=PLUGIN_MANUFACTURER,
            model_name=PLUGIN_MODEL_NAME,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_CT_HEAD,
        imaging_measurements=[_study_group(result, referenced), *_key_slice_groups(result, referenced)],
        title=codes.cid7021.ImagingMeasurementReport,
        referenced_images=library or None,
    )
    # highdicom's MeasurementReport builds rows 1-9 of TID 1500; row 12 (Qualitative Evaluations) is added here.
    report[0].ContentSequence.append(_qualitative_evaluations(result))

    # Evidence: every source and referenced instance. The first is a stand-in for highdicom's strict reading of
    # patient/study values; the real ones are copied exactly below.
    evidence = unique_by_sop_instance([*sources, *referenced])
    evidence[0] = _construction_reference(evidence[0])
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=PLUGIN_MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=acquisition_equipment(referenced[0] if referenced else reference),
        series_description=series_description,
        manufacturer_model_name=PLUGIN_MODEL_NAME,
        software_versions=software_versions(result.model),
    )
    copy_patient_and_study(sr, reference)
    logger.info(
        "structured report %s for study %s (%s, %d referenced images)",
        sop_instance_uid,
        result.study_instance_uid,
        result.decision.value,
        len(referenced),
    )
    return sr
