"""The study result: what the application concludes for one study, and what every output reports.

Plain data (no torch), shared by the application (which fills it), the DICOM writers (which encode it as a
Secondary Capture and an SR) and the service (which logs and delivers it). ``report.json`` is its JSON form.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

PLUGIN_MANUFACTURER = "ICH Triage Plugin (open source)"
"""Manufacturer (0008,0070) of every object we write: the loop guard recognises our own outputs by it."""
PLUGIN_MODEL_NAME = "ich-triage"
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"


class TriageDecision(str, Enum):
    POSITIVE = "POSITIVE"
    NEGATIVE = "NEGATIVE"
    NOT_ANALYZED = "NOT_ANALYZED"


class NotAnalyzedReason(str, Enum):
    """Closed vocabulary of why a study was not analysed; the message adds the specifics."""

    NO_DICOM = "no_dicom"
    NO_USABLE_SERIES = "no_usable_series"
    LOCALIZER_ONLY = "localizer_only"
    TOO_FEW_SLICES = "too_few_slices"
    WRONG_MODALITY = "wrong_modality"
    UNREADABLE_PIXEL_DATA = "unreadable_pixel_data"
    MULTIPLE_STUDIES = "multiple_studies"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256: str = ""


@dataclass(frozen=True)
class SliceScore:
    """One classified slice (or slab of thin slices): its position and the source instances it covers."""

    index: int
    z_mm: float
    probability: float
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class StudyResult:
    study_instance_uid: str
    decision: TriageDecision
    model: ModelIdentity
    threshold: float
    probability: float | None = None
    reason: NotAnalyzedReason | None = None
    message: str = ""
    series_instance_uid: str | None = None
    series_description: str = ""
    slices: tuple[SliceScore, ...] = ()
    key_slices: tuple[int, ...] = ()
    subtype_probabilities: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    aggregation: str = ""

    def __post_init__(self) -> None:
        if self.decision is TriageDecision.NOT_ANALYZED:
            if self.reason is None:
                raise ValueError("a NOT_ANALYZED result needs a reason")
        elif self.probability is None or not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"an analysed result needs a probability in [0, 1], got {self.probability}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decision"] = self.decision.value
        d["reason"] = self.reason.value if self.reason else None
        d["disclaimer"] = f"{NOT_FOR_DIAGNOSTIC_USE}: research triage aid, not a medical device."
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyResult:
        return cls(
            study_instance_uid=d["study_instance_uid"],
            decision=TriageDecision(d["decision"]),
            model=ModelIdentity(**d["model"]),
            threshold=d["threshold"],
            probability=d.get("probability"),
            reason=NotAnalyzedReason(d["reason"]) if d.get("reason") else None,
            message=d.get("message", ""),
            series_instance_uid=d.get("series_instance_uid"),
            series_description=d.get("series_description", ""),
            slices=tuple(SliceScore(**{**s, "sop_instance_uids": tuple(s["sop_instance_uids"])}) for s in d.get("slices", [])),
            key_slices=tuple(d.get("key_slices", [])),
            subtype_probabilities=dict(d.get("subtype_probabilities", {})),
            warnings=tuple(d.get("warnings", [])),
            aggregation=d.get("aggregation", ""),
        )
