"""CT sources for the DICOM writer and validator tests: small valid CT series written with pydicom, and CQ500.

Every slice is a CT Image Storage instance that passes dciodvfy (PS3.3 A.3 CT Image IOD). The defaults are one
patient and study; tests that need other values pass them as ``attributes`` (None deletes an attribute).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CQ500 = DATA / "cq500-dicom" / "CQ500-CT-0"
"""Real CT headers (CQ500), when present: tests that need them skip otherwise."""
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
"""Patient and study attributes an output must copy exactly from its sources (one patient, one study)."""


def write_ct_series(
    folder: Path,
    *,
    n_slices: int,
    size: int = 32,
    pixel_value: int = 1024,
    pixel_spacing: float = 0.5,
    origin: tuple[float, float] = (-8.0, -8.0),
    attributes: Mapping[str, object] | None = None,
) -> list[Path]:
    """Write a small valid CT series (PS3.3 A.3), slices 5 mm apart, as ``folder/CT0000.dcm``...

    ``attributes`` set (or, with None, delete) attributes on every slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(n_slices):
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
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study, "20240102", "101112"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "Ref^Doc", "S1", "ACC1"
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.BodyPartExamined = "CT", series, 2, "HEAD"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer, ds.InstanceNumber, ds.PatientPosition, ds.AcquisitionNumber = "ACME", i + 1, "HFS", 1
        ds.ContentDate, ds.ContentTime = "20240102", "101500"
        ds.PixelSpacing, ds.SliceThickness = [pixel_spacing, pixel_spacing], 5.0
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [*origin, 5.0 * i]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", size, size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.KVP = -1024, 1, 120
        ds.PixelData = np.full((size, size), pixel_value, np.int16).tobytes()
        for keyword, value in (attributes or {}).items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        path = folder / f"CT{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def read_headers(paths: Sequence[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
