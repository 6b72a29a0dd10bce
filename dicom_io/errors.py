"""Typed errors of the DICOM side.

One base class, :class:`DicomIoError`, and narrow subclasses (the MONAI Deploy SDK's pattern). The split
that matters to callers (STYLE.md, item 5):

- :class:`NotAnalyzedError`: the *input* cannot be analysed (no CT series, a localizer only, pixel data
  that will not decode, ...). The application turns it into a NOT_ANALYZED :class:`~dicom_io.result.StudyResult`
  with the same :class:`~dicom_io.result.NotAnalyzedReason`, sends that result, and keeps the input.
  It is never retried: the same files give the same answer.
- :class:`SelectionRulesError`: the site's selection-rules file is wrong. A configuration error, raised at
  start-up (or on load), never a property of a study.

Messages name the study (UIDs are fine) and what was rejected and why; they never carry patient names or IDs.
"""

from __future__ import annotations

from dicom_io.result import NotAnalyzedReason

__all__ = ["DicomIoError", "NotAnalyzedError", "SelectionRulesError"]


class DicomIoError(Exception):
    """Base class of every error raised by ``dicom_io``."""


class NotAnalyzedError(DicomIoError):
    """The input is not something this application can analyse.

    Args:
        reason: the closed-vocabulary reason, reported in the result and the outputs.
        message: the specifics for a human: which study, which series or file, what was wrong.
        study_instance_uid: the study concerned, when known.

    Attributes:
        reason: as given.
        message: as given.
        study_instance_uid: as given (may be None).
    """

    def __init__(self, reason: NotAnalyzedReason, message: str, *, study_instance_uid: str | None = None) -> None:
        if not isinstance(reason, NotAnalyzedReason):
            raise TypeError(f"reason must be a NotAnalyzedReason, got {reason!r}")
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.study_instance_uid = study_instance_uid

    def __reduce__(self) -> tuple[object, ...]:  # keep picklable across worker processes despite keyword-only args
        return (_rebuild_not_analyzed, (self.reason, self.message, self.study_instance_uid))


def _rebuild_not_analyzed(reason: NotAnalyzedReason, message: str, study_instance_uid: str | None) -> NotAnalyzedError:
    return NotAnalyzedError(reason, message, study_instance_uid=study_instance_uid)


class SelectionRulesError(DicomIoError, ValueError):
    """The series selection rules (JSON) are malformed: a site configuration error, not bad input."""
