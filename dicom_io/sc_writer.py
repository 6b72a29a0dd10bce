"""Secondary Capture writer: the Grad-CAM (or NOT_ANALYZED text) image that goes back into the source study.

The image is an RGB rendering that already has the overlay and the text burned in (``monai_app.pipeline.overlay``
renders it); this module only wraps it in a Secondary Capture Image (PS3.3 A.8.1 SC Image IOD) built with
highdicom's :class:`highdicom.sc.SCImage`, so that it lands in the radiologist's existing viewer:

* same study: Study Instance UID and every Patient / General Study / Patient Study attribute copied exactly from the
  source, so that ``dcentvfy`` over source + outputs finds one patient and one study (PS3.3 A.1.2, C.7.1.1, C.7.2.1);
* new series with new UIDs (callers pass deterministic ones, see :func:`derived_uid`, so a re-send after a crash
  carries the same UIDs and the PACS replaces rather than duplicates);
* Image Type ``DERIVED\\SECONDARY`` (PS3.3 C.7.6.1.1.2), Burned In Annotation ``YES`` (C.7.6.1), Conversion Type
  ``WSD`` (C.8.6.1, workstation), Manufacturer = :data:`~dicom_io.result.PLUGIN_MANUFACTURER` (the loop guard keys
  on it), "NOT FOR DIAGNOSTIC USE" in the Series Description, Derivation Description and Image Comments;
* Source Image Sequence (C.7.6.1) naming the CT slices the key image was rendered from, with purpose of reference
  (DCM 121322, "Source image for image processing operation", CID 7202).

The helpers shared with :mod:`dicom_io.sr_writer` (:func:`derived_uid`, :func:`software_versions`, the exact
patient/study copy) live here because both writers use them and this module came first.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from enum import Enum
from importlib import metadata

import highdicom as hd
import numpy as np
from highdicom.sc.enum import ConversionTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_io.result import (
    NOT_FOR_DIAGNOSTIC_USE,
    PLUGIN_MANUFACTURER,
    PLUGIN_MODEL_NAME,
    ModelIdentity,
    StudyResult,
    TriageDecision,
)

logger = logging.getLogger(__name__)

SC_SERIES_DESCRIPTION = f"ICH triage Grad-CAM - {NOT_FOR_DIAGNOSTIC_USE}"
SC_NOT_ANALYZED_SERIES_DESCRIPTION = f"ICH triage not analysed - {NOT_FOR_DIAGNOSTIC_USE}"
DEFAULT_BODY_PART = "HEAD"

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ich-triage:dicom-uid")
"""Fixed namespace of :func:`derived_uid`: changing it changes every derived UID (re-sends would duplicate)."""

_DEIDENTIFICATION_METHOD_UNSTATED = "Source: Patient Identity Removed YES, method not stated"
"""Deidentification Method we add when a source says YES but gives no method (PS3.3 C.7.1.1: then Type 1C)."""

_LO_MAX = 64  # PS3.5 6.2: Long String, 64 characters
_ST_MAX = 1024  # PS3.5 6.2: Short Text, 1024 characters


# --- shared by the writers ------------------------------------------------------------------------------------------


def derived_uid(*parts: object) -> str:
    """Return a deterministic UID derived from ``parts`` (PS3.5 B.2: ``2.25.`` + UUID as a decimal integer).

    The UUID is a name-based (SHA-1, version 5) UUID of the parts in a fixed namespace, so the same parts always give
    the same UID and different parts practically never collide. Use it for output series and instances, e.g.
    ``derived_uid(study_uid, model.version, "sc-series")`` and ``derived_uid(study_uid, model.version, "sc", 1)``,
    so that re-sending a study's results produces the same UIDs.

    Args:
        parts: At least one value; each is converted with ``str`` (enums by their value), and the list is encoded
            unambiguously (``("ab", "c")`` and ``("a", "bc")`` give different UIDs).

    Returns:
        A valid UID of at most 44 characters.

    Raises:
        ValueError: no parts.
    """
    if not parts:
        raise ValueError("derived_uid needs at least one part")
    name = json.dumps([p.value if isinstance(p, Enum) else str(p) for p in parts], separators=(",", ":"))
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def plugin_version() -> str:
    """Version of the installed ``ich-triage`` distribution, or ``"unknown"`` when running from a source tree."""
    try:
        return metadata.version("ich-triage")
    except metadata.PackageNotFoundError:
        return "unknown"


def software_versions(model: ModelIdentity) -> list[str]:
    """Software Versions (0018,1020) of every object we write: the plugin and the model (LO, 64 characters each)."""
    return [f"{PLUGIN_MODEL_NAME} {plugin_version()}"[:_LO_MAX], f"{model.name} {model.version}"[:_LO_MAX]]


def check_sources(sources: Sequence[Dataset], result: StudyResult, referenced: Sequence[Dataset]) -> Dataset:
    """Check the inputs every writer shares and return the dataset to take patient and study attributes from.

    Args:
        sources: Headers of the analysed series (or, for NOT_ANALYZED, any instances of the study); the first one
            supplies the patient and study attributes.
        result: The study result; its Study Instance UID must be the sources'.
        referenced: Headers of the source images the output refers to (may be empty); same study.

    Returns:
        ``sources[0]``.

    Raises:
        ValueError: no sources, sources from more than one study, a study UID that differs from the result's, or a
            referenced instance from another study or without SOP Class / Instance UIDs.
    """
    if not sources:
        raise ValueError(f"study {result.study_instance_uid}: no source datasets to take patient/study attributes from")
    study_uids = {str(ds.get("StudyInstanceUID", "")) for ds in sources}
    if len(study_uids) != 1:
        raise ValueError(f"sources belong to {len(study_uids)} studies: {sorted(study_uids)}")
    (study_uid,) = study_uids
    if study_uid != result.study_instance_uid:
        raise ValueError(f"sources are from study {study_uid!r}, the result is for {result.study_instance_uid!r}")
    for ds in referenced:
        if str(ds.get("StudyInstanceUID", "")) != study_uid:
            raise ValueError(f"referenced instance {ds.get('SOPInstanceUID')} is not in study {study_uid}")
        if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
            raise ValueError(f"study {study_uid}: a referenced dataset has no SOP Class UID or SOP Instance UID")
    return sources[0]


def check_new_series(
    series_instance_uid: str, datasets: Iterable[Dataset], *, series_number: int, instance_number: int
) -> None:
    """Check that the output series UID is a valid UID of a new series and that the numbers are positive.

    Raises:
        ValueError: invalid UID, the UID of a source series (outputs are always a new series, PS3.3 C.7.3.1), or a
            series/instance number below 1.
    """
    if not UID(series_instance_uid).is_valid:
        raise ValueError(f"invalid Series Instance UID {series_instance_uid!r}")
    source_series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if series_instance_uid in source_series:
        raise ValueError(f"Series Instance UID {series_instance_uid} is a source series; outputs need a new series")
    if series_number < 1 or instance_number < 1:
        raise ValueError(f"series number {series_number} and instance number {instance_number} must be >= 1")


def check_series_description(description: str) -> str:
    """Return ``description`` if it says "NOT FOR DIAGNOSTIC USE" and fits a LO (64 characters); else raise ValueError."""
    if NOT_FOR_DIAGNOSTIC_USE not in description:
        raise ValueError(f"series description must contain {NOT_FOR_DIAGNOSTIC_USE!r}: {description!r}")
    if len(description) > _LO_MAX:
        raise ValueError(f"series description longer than {_LO_MAX} characters: {description!r}")
    return description


def unique_by_sop_instance(datasets: Iterable[Dataset]) -> list[Dataset]:
    """The datasets in order, each SOP Instance UID once."""
    seen: set[str] = set()
    out: list[Dataset] = []
    for ds in datasets:
        uid = str(ds.SOPInstanceUID)
        if uid not in seen:
            seen.add(uid)
            out.append(ds)
    return out


def acquisition_equipment(source: Dataset) -> list[hd.ContributingEquipment]:
    """Contributing Equipment item for the scanner that acquired ``source`` (empty when it names no manufacturer)."""
    try:
        return [hd.ContributingEquipment.for_image_acquisition(source)]
    except (AttributeError, ValueError, KeyError):
        return []


def copy_patient_and_study(target: hd.SOPClass, source: Dataset) -> None:
    """Copy every Patient and Study IE attribute of ``source`` into ``target`` exactly, element by element.

    ``dcentvfy`` reports an error when two instances of one patient or study disagree on a value (PS3.3 A.1.2: the
    Patient and Study IEs are shared), so nothing is re-formatted: the data elements are copied as they are
    (Patient, Clinical Trial Subject, General Study, Patient Study, Clinical Trial Study modules of the target IOD).
    Attributes the source lacks keep the empty Type 2 value highdicom gave them (``dcentvfy`` only warns on that).

    One repair: a source that declares Patient Identity Removed ``YES`` without a Deidentification Method (Code
    Sequence) is itself invalid (PS3.3 C.7.1.1, Type 1C); copying it as-is would make our output fail ``dciodvfy``.
    We keep ``YES`` (the output is as de-identified as its source) and add a Deidentification Method saying the
    method was not stated; ``dcentvfy`` reports that only as a warning (present in one instance, not the other).
    """
    target.copy_patient_and_study_information(source)
    if (
        str(target.get("PatientIdentityRemoved", "")).upper() == "YES"
        and not target.get("DeidentificationMethod")
        and not target.get("DeidentificationMethodCodeSequence")
    ):
        target.DeidentificationMethod = _DEIDENTIFICATION_METHOD_UNSTATED
    if "SpecificCharacterSet" in source:
        # Encode the copied names in the source's character set (PS3.3 C.12.1.1.2).
        target.SpecificCharacterSet = source.SpecificCharacterSet


def decision_summary(result: StudyResult) -> str:
    """One line for humans: the decision with its numbers, or why the study was not analysed."""
    model = f"{result.model.name} {result.model.version}"
    if result.decision is TriageDecision.NOT_ANALYZED:
        reason = result.reason.value if result.reason is not None else "unknown"
        detail = f": {result.message}" if result.message else ""
        return f"ICH triage NOT ANALYZED ({reason}{detail}) by {model}"
    return (
        f"ICH triage {result.decision.value} by {model}: probability {result.probability:.3f}, "
        f"threshold {result.threshold:.3f}"
    )


# --- the Secondary Capture ------------------------------------------------------------------------------------------


def _orientation_letter(cosines: Sequence[float]) -> str:
    """Dominant patient direction of a direction cosine vector (PS3.3 C.7.6.1.1.1: L/R, P/A, H/F = +x, +y, +z)."""
    axis = int(np.argmax(np.abs(np.asarray(cosines, dtype=float))))
    positive = cosines[axis] >= 0
    return ("L", "P", "H")[axis] if positive else ("R", "A", "F")[axis]


def patient_orientation_from(source: Dataset | None) -> tuple[str, str]:
    """Patient Orientation (row, column direction) for an image rendered in the pixel layout of ``source``.

    Derived from Image Orientation (Patient) when present (dominant axis only: highdicom accepts one letter per
    direction); otherwise ``("L", "P")``, the conventional axial display (patient's left to the viewer's right,
    posterior down).
    """
    iop = source.get("ImageOrientationPatient") if source is not None else None
    if iop is None or len(iop) != 6:
        return ("L", "P")
    values = [float(v) for v in iop]
    return (_orientation_letter(values[:3]), _orientation_letter(values[3:]))


def _auto_pixel_spacing(rgb: np.ndarray, source: Dataset | None) -> tuple[float, float] | None:
    """The source's Pixel Spacing when the rendering kept the source's pixel grid (same rows and columns)."""
    if source is None or "PixelSpacing" not in source or source.PixelSpacing is None:
        return None
    if (int(source.get("Rows", -1)), int(source.get("Columns", -1))) != tuple(rgb.shape[:2]):
        return None
    row_mm, col_mm = (float(v) for v in source.PixelSpacing)
    return (row_mm, col_mm)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"rgb must be a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise TypeError(f"rgb must be uint8, got {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"rgb must have shape (Y, X, 3), got {rgb.shape}")
    return np.ascontiguousarray(rgb)


def _derivation_description(result: StudyResult) -> str:
    if result.decision is TriageDecision.NOT_ANALYZED:
        text = f"{decision_summary(result)}. Text-only notice, no image analysis."
    else:
        text = (
            f"Grad-CAM saliency of the intracranial hemorrhage classifier burned into a brain-window rendering of "
            f"the source CT. {decision_summary(result)}."
        )
    suffix = f" {NOT_FOR_DIAGNOSTIC_USE}."
    return text[: _ST_MAX - len(suffix)] + suffix


def build_secondary_capture(
    sources: Sequence[Dataset],
    rgb: np.ndarray,
    result: StudyResult,
    *,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    referenced: Sequence[Dataset],
    sop_instance_uid: str | None = None,
    series_description: str | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    patient_orientation: tuple[str, str] | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> hd.sc.SCImage:
    """Wrap a rendered RGB image in a Secondary Capture Image of the source study (PS3.3 A.8.1).

    Args:
        sources: Headers (pixels not needed) of the analysed series; the first supplies the patient and study
            attributes. For NOT_ANALYZED, any instances of the study.
        rgb: uint8 (Y, X, 3) RGB image, overlay and text already burned in. Any decision is accepted (a text-only
            image for NOT_ANALYZED).
        result: The study result (decision, probability, threshold, model identity).
        series_instance_uid: UID of the new output series (not a source series; SC and SR need different series).
        series_number: Series Number of the output series (>= 1).
        instance_number: Instance Number of this image in that series (>= 1).
        referenced: Headers of the source slices the image was rendered from (Source Image Sequence); may be empty.
        sop_instance_uid: SOP Instance UID; default ``derived_uid(series_instance_uid, "sc", instance_number)``, so
            a deterministic series UID gives deterministic instance UIDs.
        series_description: Defaults to :data:`SC_SERIES_DESCRIPTION` (or the NOT_ANALYZED one); must contain
            "NOT FOR DIAGNOSTIC USE" and fit 64 characters.
        pixel_spacing: (row, column) mm; default: the first referenced slice's Pixel Spacing when ``rgb`` has that
            slice's rows and columns (same pixel grid), else none.
        patient_orientation: (row, column) direction letters; default derived from the first referenced slice's
            Image Orientation (Patient), else ``("L", "P")``.
        transfer_syntax_uid: Explicit VR Little Endian by default; highdicom also encodes RLE / JPEG-LS / JPEG 2000
            lossless.

    Returns:
        The Secondary Capture dataset (a :class:`highdicom.sc.SCImage`), with file meta, ready for ``save_as``.

    Raises:
        ValueError: sources empty or from another study, a source series UID reused, bad numbers, a series
            description without the disclaimer, or ``rgb`` not (Y, X, 3).
        TypeError: ``rgb`` not a uint8 numpy array.
    """
    reference = check_sources(sources, result, referenced)
    pixels = _check_rgb(rgb)
    check_new_series(
        series_instance_uid, [*sources, *referenced], series_number=series_number, instance_number=instance_number
    )
    if series_description is None:
        series_description = (
            SC_NOT_ANALYZED_SERIES_DESCRIPTION
            if result.decision is TriageDecision.NOT_ANALYZED
            else SC_SERIES_DESCRIPTION
        )
    check_series_description(series_description)
    referenced = unique_by_sop_instance(referenced)
    key_source = referenced[0] if referenced else None
    if pixel_spacing is None:
        pixel_spacing = _auto_pixel_spacing(pixels, key_source)
    if patient_orientation is None:
        patient_orientation = patient_orientation_from(key_source)
    sop_instance_uid = sop_instance_uid or derived_uid(series_instance_uid, "sc", instance_number)

    # Patient/study arguments stay None here and are copied element by element afterwards: highdicom re-formats
    # (and rejects caret-less names such as "CQ500-CT-1"), and dcentvfy needs the source's values unchanged.
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=reference.StudyInstanceUID,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=PLUGIN_MANUFACTURER,
        pixel_spacing=pixel_spacing,
        patient_orientation=patient_orientation,
        transfer_syntax_uid=transfer_syntax_uid,
        contributing_equipment=acquisition_equipment(key_source or reference),
        series_description=series_description,
        manufacturer_model_name=PLUGIN_MODEL_NAME,
        software_versions=software_versions(result.model),
    )
    copy_patient_and_study(sc, reference)

    # PS3.3 C.8.6.1 SC Equipment: made on a workstation from our own rendering, not digitised from film/video.
    sc.ConversionType = ConversionTypeValues.WSD.value
    # PS3.3 C.7.6.1.1.2: derived pixels, not the acquisition's own image.
    sc.ImageType = ["DERIVED", "SECONDARY"]
    # PS3.3 C.7.6.1: the overlay and the "not for diagnostic use" text are part of the pixels.
    sc.BurnedInAnnotation = "YES"
    # PS3.3 C.7.3.1: Laterality is Type 2C unless the body part is known and unpaired; a head is not paired.
    sc.BodyPartExamined = str(reference.get("BodyPartExamined") or DEFAULT_BODY_PART)
    sc.DerivationDescription = _derivation_description(result)
    sc.ImageComments = f"{NOT_FOR_DIAGNOSTIC_USE}. {decision_summary(result)}."
    if referenced:
        purpose = hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
        items = []
        for ds in referenced:
            item = Dataset()
            item.ReferencedSOPClassUID = ds.SOPClassUID
            item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            item.PurposeOfReferenceCodeSequence = [purpose]
            items.append(item)
        sc.SourceImageSequence = items
    logger.info(
        "secondary capture %s for study %s (%s, %d source images)",
        sop_instance_uid,
        result.study_instance_uid,
        result.decision.value,
        len(referenced),
    )
    return sc
