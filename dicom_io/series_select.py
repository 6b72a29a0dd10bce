"""Find the studies and series in a folder of DICOM files, and pick the one series to analyse.

Two steps, both on headers only (pixel data is never read here):

1. :func:`scan_folder` walks a folder recursively, reads each file's header (``stop_before_pixels``) and
   groups the instances by Study Instance UID and Series Instance UID. Files that are not DICOM, DICOMDIRs,
   instances without the UIDs that place them, repeated SOP Instance UIDs and *our own outputs* (Manufacturer
   equal to :data:`dicom_io.result.PLUGIN_MANUFACTURER`: the loop guard) are skipped, each with a reason.
2. :func:`select_series` applies the site's selection rules to one study and returns the series to analyse,
   or raises :class:`~dicom_io.errors.NotAnalyzedError` with the most specific reason.

Selection rules use the MONAI Deploy App SDK's JSON format (``DICOMSeriesSelectorOperator``) so a site can
reuse what it knows; this module implements the matching itself and does not need the SDK runtime::

    {"selections": [{"name": "...", "conditions": {"Modality": "(?i)^CT$", "ImageType": ["!LOCALIZER"],
                                                   "ImageOrientationPatient": "Axial", "SliceThickness": [0.5, 10]},
                     "ich_triage": {"min_slices": 5, "max_tilt_deg": 30, "reject_contrast_agent": true}}],
     "ich_triage": {"target_slice_thickness_mm": 5.0, "deprioritize": {"ConvolutionKernel": "(?i)bone"}}}

Conditions, as in the SDK (``conditions`` keys are DICOM keywords, looked up in the series' first instance):

- a condition whose value is empty (``""``, ``[]``, ``0``, ``null``) is ignored; an attribute that is absent
  or empty in the series fails its condition;
- text attribute, text value: equal ignoring case, else a case-insensitive ``re.search`` of the value;
- number attribute: ``[lo, hi]`` inclusive range, ``[v, op]`` with op one of ``> >= < <= !=``, a number
  (equality) or a regex ``re.fullmatch``-ed against ``str(value)``;
- multi-valued attribute (e.g. Image Type), list value: every plain term is contained in the values and no
  ``!term`` is (case-insensitive substring tests, as in the SDK); a single string value is one such term;
- ``ImageOrientationPatient``: ``"Axial"``, ``"Coronal"`` or ``"Sagittal"``, the patient axis closest to the
  slice normal (row x column direction cosines; PS3.3 C.7.6.2.1.1). Unlike the SDK, Patient Position is not
  needed: Image Orientation (Patient) is already relative to the patient.

Our named extensions sit in ``"ich_triage"`` objects, which the SDK ignores, so the same file also loads in the
SDK's operator. Per selection (defaults apply when absent, so a plain SDK file still gets them):

- ``min_slices`` (default 5): fewest distinct slice positions. Five screens out scouts, single test slices
  and key-image series while still letting a short phantom series through; a 5 mm head series has ~30
  slices, so sites that want whole-head coverage raise it.
- ``max_tilt_deg`` (default 30): largest angle between the slice normal and the patient z axis (gantry
  tilt). Tilted series are analysed slice by slice, without resampling.
- ``reject_contrast_agent`` (default true): reject a series whose Contrast/Bolus Agent (0018,0010;
  PS3.3 C.7.6.4) is present with a value other than a "none" word (``no_contrast_pattern``). Only that
  structured attribute counts, never the free-text Series Description: CQ500-CT-0's description
  ("4cc sec 150cc D3D on") reads like an injection protocol, yet it carries no Contrast/Bolus Agent, and
  CQ500 is a non-contrast head CT collection, so it is analysed. A site that wants description-based
  exclusion adds an SDK condition such as ``"SeriesDescription": "^(?!.*(?i:contrast|c\\+)).*$"``.

Built-in checks on every series: instances carry Image Position and Orientation (Patient) (Type 1 in the
Image Plane Module, PS3.3 C.7.6.2), one orientation for the whole series, single-frame images.

Choosing among qualifying series (selections are tried in file order; the first selection that any series
satisfies is used), deterministically, in this order:

1. series that match none of the ``deprioritize`` patterns (keyword -> regex, e.g. bone kernels) first;
2. slice thickness (Slice Thickness, else the spacing of positions) closest to ``target_slice_thickness_mm``
   (the slab thickness the classifier sees; native slabs need no averaging);
3. more distinct slice positions (coverage);
4. lower Series Number; 5. Series Instance UID (text order).

When no series qualifies, the reason is the most specific one that explains every series:
WRONG_MODALITY (all fail the Modality condition), LOCALIZER_ONLY (the rest are localizers),
TOO_FEW_SLICES (the rest only lack slices), NO_USABLE_SERIES otherwise; the message names the study and
each series with why it was rejected.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import MediaStorageDirectoryStorage

from dicom_io.errors import NotAnalyzedError, SelectionRulesError
from dicom_io.result import PLUGIN_MANUFACTURER, NotAnalyzedReason

logger = logging.getLogger(__name__)

DEFAULT_RULES_PATH = Path(__file__).resolve().parents[1] / "monai_app" / "config" / "selection_rules.json"
"""The selection rules shipped with the application (a site replaces the file or points the config elsewhere)."""

EXTENSION_KEY = "ich_triage"
DEFAULT_MIN_SLICES = 5
DEFAULT_MAX_TILT_DEG = 30.0
DEFAULT_TARGET_THICKNESS_MM = 5.0
DEFAULT_NO_CONTRAST_PATTERN = r"(?i)^\s*(none|no|n/?a|nil|-+|0|no contrast|non[- ]?contrast|without contrast|unenhanced)?\s*$"
POSITION_TOLERANCE_MM = 0.05
"""Two slices whose positions along the normal differ by less than this are at the same position."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines of instances of one series."""

_ORIENTATIONS = ("Sagittal", "Coronal", "Axial")  # patient axis x, y, z closest to the slice normal
_RELATIONAL = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "!=": lambda a, b: a != b,
}


# --------------------------------------------------------------------------- scanned folder
@dataclass(frozen=True, eq=False)
class InstanceInfo:
    """One DICOM file: where it is and its header (no pixel data)."""

    path: Path
    header: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.SOPInstanceUID)


@dataclass(frozen=True, eq=False)
class SeriesInfo:
    """The instances of one series, ordered by (Instance Number, SOP Instance UID) for stable reporting.

    This order is *not* the geometric order: :func:`dicom_io.series_to_volume.build_volume` sorts slices by
    Image Position (Patient) along the slice normal.
    """

    study_instance_uid: str
    series_instance_uid: str
    instances: tuple[InstanceInfo, ...]

    def __post_init__(self) -> None:
        if not self.instances:
            raise ValueError(f"series {self.series_instance_uid} has no instances")

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(i.path for i in self.instances)

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        """Headers of the instances (pixel data not loaded)."""
        return tuple(i.header for i in self.instances)

    @property
    def first(self) -> Dataset:
        return self.instances[0].header

    @property
    def n_instances(self) -> int:
        return len(self.instances)

    @property
    def modality(self) -> str:
        return str(self.first.get("Modality", "") or "")

    @property
    def series_number(self) -> int | None:
        value = self.first.get("SeriesNumber", None)
        return int(value) if value not in (None, "") else None

    @property
    def series_description(self) -> str:
        return str(self.first.get("SeriesDescription", "") or "")

    @property
    def image_type(self) -> tuple[str, ...]:
        return _as_strings(self.first.get("ImageType", None))

    @property
    def slice_thickness(self) -> float | None:
        """Slice Thickness (0018,0050) of the first instance, mm; None when absent or empty (Type 2)."""
        return _as_float(self.first.get("SliceThickness", None))

    def label(self) -> str:
        """A short human description for messages: UID, number, description, instance count."""
        number = f"#{self.series_number} " if self.series_number is not None else ""
        return f"series {self.series_instance_uid} ({number}'{self.series_description}', {self.modality or '?'}, {self.n_instances} instance(s))"


@dataclass(frozen=True, eq=False)
class StudyInfo:
    """The series of one study, keyed by Series Instance UID."""

    study_instance_uid: str
    series: dict[str, SeriesInfo]

    @property
    def n_instances(self) -> int:
        return sum(s.n_instances for s in self.series.values())


@dataclass(frozen=True, eq=False)
class ScanResult:
    """What :func:`scan_folder` found: studies by Study Instance UID, and every skipped file with its reason."""

    studies: dict[str, StudyInfo]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def single_study(self) -> StudyInfo:
        """The only study in the folder.

        Raises:
            NotAnalyzedError: NO_DICOM when there is none, MULTIPLE_STUDIES when there are several.
        """
        if not self.studies:
            detail = f" (skipped {len(self.skipped)} file(s), e.g. {self.skipped[0][0].name}: {self.skipped[0][1]})" if self.skipped else ""
            raise NotAnalyzedError(NotAnalyzedReason.NO_DICOM, f"no DICOM study found{detail}")
        if len(self.studies) > 1:
            raise NotAnalyzedError(
                NotAnalyzedReason.MULTIPLE_STUDIES,
                f"{len(self.studies)} studies in one input ({', '.join(sorted(self.studies))}); expected one",
            )
        return next(iter(self.studies.values()))


_HEADER_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, NotImplementedError, struct.error)
"""What pydicom raises on files that are not (valid) DICOM: each becomes a skip reason, never a crash."""


def scan_folder(folder: str | Path) -> ScanResult:
    """Read the header of every file under ``folder`` (recursively) and group instances by study and series.

    Only headers are read (``stop_before_pixels``). Symbolic links to directories are not followed. Files
    are visited in sorted path order, so the result does not depend on the file system.

    Args:
        folder: a directory (or a single file).

    Returns:
        A :class:`ScanResult`; files that are not used are in ``skipped`` with a reason each: not DICOM,
        DICOMDIR, missing UIDs, a repeated SOP Instance UID, or our own output (loop guard).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist")
    skipped: list[tuple[Path, str]] = []
    grouped: dict[str, dict[str, dict[str, InstanceInfo]]] = {}
    for path in _walk(folder):
        header, reason = _read_header(path)
        if header is None:
            skipped.append((path, reason))
            continue
        study_uid = str(header.get("StudyInstanceUID", "") or "")
        series_uid = str(header.get("SeriesInstanceUID", "") or "")
        sop_uid = str(header.get("SOPInstanceUID", "") or "")
        missing = [k for k, v in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid), ("SOPInstanceUID", sop_uid)) if not v]
        if missing:
            skipped.append((path, f"missing {', '.join(missing)}"))
            continue
        series = grouped.setdefault(study_uid, {}).setdefault(series_uid, {})
        if sop_uid in series:
            skipped.append((path, f"duplicate SOP Instance UID {sop_uid} (already read from {series[sop_uid].path.name})"))
            continue
        series[sop_uid] = InstanceInfo(path=path, header=header)
    studies = {
        study_uid: StudyInfo(
            study_instance_uid=study_uid,
            series={series_uid: SeriesInfo(study_uid, series_uid, tuple(sorted(by_sop.values(), key=_instance_order))) for series_uid, by_sop in sorted(series.items())},
        )
        for study_uid, series in sorted(grouped.items())
    }
    n = sum(s.n_instances for s in studies.values())
    logger.info("scanned %s: %d instance(s) in %d study(ies), %d file(s) skipped", folder, n, len(studies), len(skipped))
    for path, reason in skipped:
        logger.debug("skipped %s: %s", path, reason)
    return ScanResult(studies=studies, skipped=skipped)


def _walk(folder: Path) -> Iterable[Path]:
    if folder.is_file():
        yield folder
        return
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def _read_header(path: Path) -> tuple[Dataset | None, str]:
    """The header of ``path`` or (None, why it is not used)."""
    try:
        with warnings.catch_warnings():  # junk files make pydicom warn; the skip reason says it once
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None, "not a DICOM file (no 'DICM' prefix after the 128-byte preamble, PS3.10 7.1)"
    except _HEADER_ERRORS as exc:
        return None, f"unreadable DICOM header ({type(exc).__name__}: {exc})"
    sop_class = header.get("SOPClassUID", None) or getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", None)
    if sop_class == MediaStorageDirectoryStorage:
        return None, "DICOMDIR (media storage directory), not an instance"
    manufacturer = str(header.get("Manufacturer", "") or "")
    if manufacturer == PLUGIN_MANUFACTURER:
        return None, f"our own output (Manufacturer '{PLUGIN_MANUFACTURER}'): loop guard"
    return header, ""


def _instance_order(instance: InstanceInfo) -> tuple[int, str]:
    number = instance.header.get("InstanceNumber", None)
    try:
        n = int(number) if number not in (None, "") else 2**31
    except (TypeError, ValueError):
        n = 2**31
    return (n, instance.sop_instance_uid)


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Selection:
    """One named selection: SDK conditions plus our extensions (see the module docstring)."""

    name: str
    conditions: Mapping[str, Any]
    min_slices: int = DEFAULT_MIN_SLICES
    max_tilt_deg: float | None = DEFAULT_MAX_TILT_DEG
    reject_contrast_agent: bool = True
    no_contrast_pattern: str = DEFAULT_NO_CONTRAST_PATTERN

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", MappingProxyType(dict(self.conditions)))
        where = f"selection '{self.name}'"
        if isinstance(self.min_slices, bool) or not isinstance(self.min_slices, int) or self.min_slices < 1:
            raise SelectionRulesError(f"{where}: min_slices must be an integer >= 1, got {self.min_slices!r}")
        if self.max_tilt_deg is not None and not (isinstance(self.max_tilt_deg, (int, float)) and 0 <= self.max_tilt_deg < 90):
            raise SelectionRulesError(f"{where}: max_tilt_deg must be in [0, 90) or null, got {self.max_tilt_deg!r}")
        _compile(self.no_contrast_pattern, f"{where}: no_contrast_pattern")
        for key, value in self.conditions.items():
            _validate_condition(key, value, where)


@dataclass(frozen=True)
class SelectionRules:
    """Parsed selection rules: selections in priority order and the tie-break preferences.

    Attributes:
        selections: tried in order; the first one that any series satisfies decides.
        target_slice_thickness_mm: preferred slice thickness, mm (match the application's slab thickness).
        deprioritize: DICOM keyword -> regex; a series whose value matches any is ranked after the others.
        source: where the rules came from (a path or ``<dict>``), for messages.
    """

    selections: tuple[Selection, ...]
    target_slice_thickness_mm: float = DEFAULT_TARGET_THICKNESS_MM
    deprioritize: Mapping[str, str] = field(default_factory=dict)
    source: str = "<dict>"

    def __post_init__(self) -> None:
        if not self.selections:
            raise SelectionRulesError(f"{self.source}: no selection with conditions")
        if not self.target_slice_thickness_mm > 0:
            raise SelectionRulesError(f"{self.source}: target_slice_thickness_mm must be > 0, got {self.target_slice_thickness_mm}")
        object.__setattr__(self, "deprioritize", MappingProxyType(dict(self.deprioritize)))
        for key, pattern in self.deprioritize.items():
            if not isinstance(pattern, str):
                raise SelectionRulesError(f"{self.source}: deprioritize[{key!r}] must be a regex string")
            _compile(pattern, f"{self.source}: deprioritize[{key!r}]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> SelectionRules:
        """Parse the SDK JSON structure (already loaded). Raises SelectionRulesError."""
        if not isinstance(data, Mapping):
            raise SelectionRulesError(f"{source}: the rules must be a JSON object")
        raw = data.get("selections")
        if not isinstance(raw, list) or not raw:
            raise SelectionRulesError(f"{source}: expected a non-empty 'selections' list (MONAI Deploy selection rules)")
        selections = []
        for n, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise SelectionRulesError(f"{source}: selections[{n}] must be an object")
            conditions = item.get("conditions")
            if not conditions:  # the SDK skips a selection without conditions
                logger.warning("%s: selection %r has no conditions; skipped (as the SDK does)", source, item.get("name", n))
                continue
            if not isinstance(conditions, Mapping):
                raise SelectionRulesError(f"{source}: selections[{n}].conditions must be an object")
            ext = item.get(EXTENSION_KEY, {}) or {}
            unknown = set(ext) - {"min_slices", "max_tilt_deg", "reject_contrast_agent", "no_contrast_pattern", "description"}
            if unknown:
                raise SelectionRulesError(f"{source}: selections[{n}].{EXTENSION_KEY}: unknown keys {sorted(unknown)}")
            selections.append(
                Selection(
                    name=str(item.get("name", "") or f"selection {n}").strip(),
                    conditions=conditions,
                    min_slices=ext.get("min_slices", DEFAULT_MIN_SLICES),
                    max_tilt_deg=ext.get("max_tilt_deg", DEFAULT_MAX_TILT_DEG),
                    reject_contrast_agent=bool(ext.get("reject_contrast_agent", True)),
                    no_contrast_pattern=ext.get("no_contrast_pattern", DEFAULT_NO_CONTRAST_PATTERN),
                )
            )
        top = data.get(EXTENSION_KEY, {}) or {}
        unknown = set(top) - {"target_slice_thickness_mm", "deprioritize", "description"}
        if unknown:
            raise SelectionRulesError(f"{source}: {EXTENSION_KEY}: unknown keys {sorted(unknown)}")
        target = top.get("target_slice_thickness_mm", DEFAULT_TARGET_THICKNESS_MM)
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise SelectionRulesError(f"{source}: target_slice_thickness_mm must be a number")
        deprioritize = top.get("deprioritize", {}) or {}
        if not isinstance(deprioritize, Mapping):
            raise SelectionRulesError(f"{source}: deprioritize must be an object of keyword -> regex")
        return cls(selections=tuple(selections), target_slice_thickness_mm=float(target), deprioritize=deprioritize, source=source)


def load_selection_rules(path: str | Path | None = None) -> SelectionRules:
    """Load selection rules from a JSON file in the SDK format (plus our ``ich_triage`` extensions).

    Args:
        path: the JSON file; None = :data:`DEFAULT_RULES_PATH` (``monai_app/config/selection_rules.json``).

    Raises:
        SelectionRulesError: unreadable file, invalid JSON or invalid rules.
    """
    path = Path(path) if path is not None else DEFAULT_RULES_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SelectionRulesError(f"cannot read selection rules {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise SelectionRulesError(f"selection rules {path} are not valid JSON: {exc}") from exc
    return SelectionRules.from_dict(data, source=str(path))


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SelectionRulesError(f"{where}: invalid regular expression {pattern!r}: {exc}") from exc


def _validate_condition(key: str, value: Any, where: str) -> None:
    if not value:
        return  # ignored, as in the SDK
    if key == "ImageOrientationPatient":
        if not isinstance(value, str) or value.strip().capitalize() not in _ORIENTATIONS:
            raise SelectionRulesError(f"{where}: ImageOrientationPatient must be one of {_ORIENTATIONS}, got {value!r}")
        return
    if isinstance(value, bool) or isinstance(value, (dict, Mapping)):
        raise SelectionRulesError(f"{where}: condition {key!r} has unsupported value {value!r}")
    if isinstance(value, str):
        _compile(value, f"{where}: condition {key!r}")
    elif isinstance(value, list):
        if len(value) == 2 and isinstance(value[1], str) and isinstance(value[0], (int, float)) and not isinstance(value[0], bool):
            if value[1] not in _RELATIONAL:
                raise SelectionRulesError(f"{where}: condition {key!r}: operator must be one of {sorted(_RELATIONAL)}, got {value[1]!r}")
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            if len(value) != 2 or value[0] > value[1]:
                raise SelectionRulesError(f"{where}: condition {key!r}: a numeric range is [low, high], got {value!r}")
        elif not all(isinstance(v, (str, int, float)) for v in value):
            raise SelectionRulesError(f"{where}: condition {key!r}: list items must be strings or numbers, got {value!r}")
    elif not isinstance(value, (int, float)):
        raise SelectionRulesError(f"{where}: condition {key!r} has unsupported value {value!r}")


# --------------------------------------------------------------------------- matching
class _Category:
    """Why a series failed, from most to least fundamental (the reason of a study is the weakest one)."""

    MODALITY = 0
    LOCALIZER = 1
    OTHER = 2
    TOO_FEW = 3


@dataclass(frozen=True)
class SeriesVerdict:
    """How one series fared against one selection.

    Attributes:
        series: the series.
        selection: the selection's name.
        failures: why it does not qualify (empty = it qualifies).
        category: internal rank of the most fundamental failure (for the study's reason).
        n_positions: distinct slice positions along the normal.
        tilt_deg: angle between the slice normal and the patient z axis, degrees (NaN without geometry).
    """

    series: SeriesInfo
    selection: str
    failures: tuple[str, ...]
    category: int | None
    n_positions: int
    tilt_deg: float

    @property
    def qualifies(self) -> bool:
        return not self.failures


def evaluate_series(series: SeriesInfo, selection: Selection) -> SeriesVerdict:
    """Check one series against one selection; every failing check is listed (not only the first)."""
    failures: list[str] = []
    categories: list[int] = []
    head = series.first
    for key, expected in selection.conditions.items():
        if not expected:
            continue
        problem = _check_condition(key, expected, head)
        if problem:
            failures.append(problem)
            categories.append(_Category.MODALITY if key == "Modality" else _Category.OTHER)
    geometry, n_positions, tilt = _geometry(series)
    if geometry:
        failures.append(geometry)
        categories.append(_Category.OTHER)
    else:
        if selection.max_tilt_deg is not None and tilt > selection.max_tilt_deg + 1e-6:
            failures.append(f"gantry tilt {tilt:.1f} deg > {selection.max_tilt_deg:g} deg")
            categories.append(_Category.OTHER)
        if n_positions < selection.min_slices:
            failures.append(f"{n_positions} slice position(s) < {selection.min_slices}")
            categories.append(_Category.TOO_FEW)
    frames = [int(i.header.get("NumberOfFrames", 1) or 1) for i in series.instances]
    if max(frames) > 1:
        failures.append("multi-frame instances (Enhanced CT) are not supported")
        categories.append(_Category.OTHER)
    if selection.reject_contrast_agent:
        agent = _contrast_agent(series, selection.no_contrast_pattern)
        if agent is not None:
            failures.append(f"Contrast/Bolus Agent '{agent}' (contrast-enhanced)")
            categories.append(_Category.OTHER)
    category: int | None = None
    if categories:
        category = min(categories)
        if category != _Category.MODALITY and any("LOCALIZER" in v.upper() for v in series.image_type):
            category = _Category.LOCALIZER
    return SeriesVerdict(series, selection.name, tuple(failures), category, n_positions, tilt)


def _check_condition(key: str, expected: Any, header: Dataset) -> str | None:
    """None if ``header`` satisfies the SDK-style condition ``key: expected``, else why not."""
    value = header.get(key, None)
    if value is None or value == "" or (isinstance(value, (list, MultiValue)) and len(value) == 0):
        return f"{key} missing or empty (condition {expected!r})"
    if key == "ImageOrientationPatient":
        orientation = _orientation_label(value)
        wanted = str(expected).strip().capitalize()
        return None if orientation == wanted else f"orientation {orientation or 'invalid'}, not {wanted}"
    if isinstance(value, (list, MultiValue)):
        text = "\\".join(str(v) for v in value).lower()
        terms = [str(t).lower() for t in (expected if isinstance(expected, list) else [expected])]
        ok = all((t[1:] not in text) if t.startswith("!") else (t in text) for t in terms)
        return None if ok else f"{key} '{text.upper()}' does not match {expected!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = _match_number(expected, float(value))
        return None if ok else f"{key} {value} not in {expected!r}"
    text = str(value)
    if isinstance(expected, list):  # a single-valued text attribute against a term list: one value
        terms = [str(t).lower() for t in expected]
        low = text.lower()
        ok = all((t[1:] not in low) if t.startswith("!") else (t in low) for t in terms)
        return None if ok else f"{key} '{text}' does not match {expected!r}"
    if isinstance(expected, (int, float)):
        number = _as_float(text)
        ok = number is not None and _match_number(expected, number)
        return None if ok else f"{key} '{text}' is not {expected!r}"
    ok = text.casefold() == str(expected).casefold() or re.search(str(expected), text, re.IGNORECASE) is not None
    return None if ok else f"{key} '{text}' does not match {expected!r}"


def _match_number(expected: Any, value: float) -> bool:
    if isinstance(expected, list):
        if len(expected) == 2 and isinstance(expected[1], str):
            return bool(_RELATIONAL[expected[1]](value, float(expected[0])))
        if len(expected) == 2:
            return float(expected[0]) <= value <= float(expected[1])
        return False
    if isinstance(expected, str):
        return re.fullmatch(expected, _number_text(value)) is not None
    return value == float(expected)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _orientation_label(iop: Any) -> str | None:
    normal = _normal(iop)
    if normal is None:
        return None
    return _ORIENTATIONS[int(np.argmax(np.abs(normal)))]


def _normal(iop: Any) -> np.ndarray | None:
    """Unit slice normal (row x column direction cosines, PS3.3 C.7.6.2.1.1) or None if invalid."""
    try:
        v = np.asarray([float(x) for x in iop], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if v.shape != (6,):
        return None
    n = np.cross(v[:3], v[3:])
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 1e-6 else None


def _geometry(series: SeriesInfo) -> tuple[str, int, float]:
    """(problem or "", distinct positions along the normal, tilt in degrees)."""
    orientations, positions = [], []
    for inst in series.instances:
        iop, ipp = inst.header.get("ImageOrientationPatient", None), inst.header.get("ImagePositionPatient", None)
        if not iop or not ipp or len(iop) != 6 or len(ipp) != 3:
            return "no Image Position/Orientation (Patient) (PS3.3 C.7.6.2)", 0, math.nan
        try:
            orientations.append([float(x) for x in iop])
            positions.append([float(x) for x in ipp])
        except (TypeError, ValueError):
            return "unparseable Image Position/Orientation (Patient)", 0, math.nan
    o = np.asarray(orientations)
    if np.abs(o - o[0]).max() > ORIENTATION_TOLERANCE:
        return "instances with different Image Orientation (Patient)", 0, math.nan
    normal = _normal(o[0])
    if normal is None:
        return "invalid Image Orientation (Patient)", 0, math.nan
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    return "", count_positions(np.asarray(positions) @ normal), tilt


def count_positions(along_normal: np.ndarray, tolerance: float = POSITION_TOLERANCE_MM) -> int:
    """Distinct positions among ``along_normal`` (mm, any order), merging those closer than ``tolerance``."""
    if along_normal.size == 0:
        return 0
    p = np.sort(along_normal)
    return 1 + int(np.count_nonzero(np.diff(p) >= tolerance))


def _contrast_agent(series: SeriesInfo, none_pattern: str) -> str | None:
    """The first Contrast/Bolus Agent value in the series that names an agent, else None."""
    for inst in series.instances:
        agent = inst.header.get("ContrastBolusAgent", None)
        if agent is None:
            continue
        text = str(agent).strip()
        if text and re.search(none_pattern, text) is None:
            return text
    return None


def _effective_thickness(series: SeriesInfo) -> float:
    thickness = series.slice_thickness
    if thickness and thickness > 0:
        return thickness
    positions = []
    for inst in series.instances:
        ipp = inst.header.get("ImagePositionPatient", None)
        normal = _normal(inst.header.get("ImageOrientationPatient", None) or ())
        if ipp and normal is not None:
            positions.append(float(np.asarray([float(x) for x in ipp]) @ normal))
    if len(positions) > 1:
        d = np.diff(np.unique(np.round(positions, 3)))
        if d.size:
            return float(np.median(d))
    return math.inf


def _deprioritized(series: SeriesInfo, patterns: Mapping[str, str]) -> bool:
    for key, pattern in patterns.items():
        value = series.first.get(key, None)
        if value is None:
            continue
        text = "\\".join(_as_strings(value))
        if text and re.search(pattern, text):
            return True
    return False


def rank_key(series: SeriesInfo, n_positions: int, rules: SelectionRules, target_thickness_mm: float | None = None) -> tuple[Any, ...]:
    """Sort key of a qualifying series: smaller is preferred (see the module docstring for the order)."""
    target = target_thickness_mm if target_thickness_mm is not None else rules.target_slice_thickness_mm
    number = series.series_number
    return (
        _deprioritized(series, rules.deprioritize),
        round(abs(_effective_thickness(series) - target), 3),
        -n_positions,
        number if number is not None else 2**31,
        series.series_instance_uid,
    )


def evaluate_study(study: StudyInfo, rules: SelectionRules) -> list[list[SeriesVerdict]]:
    """Verdicts of every series of ``study`` under every selection: ``[selection][series]``."""
    return [[evaluate_series(series, selection) for series in study.series.values()] for selection in rules.selections]


def select_series(study: StudyInfo, rules: SelectionRules | None = None, *, target_thickness_mm: float | None = None) -> SeriesInfo:
    """The series of ``study`` to analyse.

    Args:
        study: from :func:`scan_folder`.
        rules: parsed rules; None = :func:`load_selection_rules` with the default file.
        target_thickness_mm: overrides the rules' preferred slice thickness (e.g. the application's slab).

    Returns:
        The chosen :class:`SeriesInfo`.

    Raises:
        NotAnalyzedError: no series qualifies; the reason is WRONG_MODALITY, LOCALIZER_ONLY, TOO_FEW_SLICES or
            NO_USABLE_SERIES (NO_DICOM for a study without series), and the message lists each series and why.
    """
    rules = rules if rules is not None else load_selection_rules()
    uid = study.study_instance_uid
    if not study.series:
        raise NotAnalyzedError(NotAnalyzedReason.NO_DICOM, f"study {uid} has no series", study_instance_uid=uid)
    verdicts = evaluate_study(study, rules)
    for selection, per_series in zip(rules.selections, verdicts, strict=True):
        qualified = [v for v in per_series if v.qualifies]
        if not qualified:
            continue
        qualified.sort(key=lambda v: rank_key(v.series, v.n_positions, rules, target_thickness_mm))
        chosen = qualified[0].series
        logger.info(
            "study %s: selected %s by '%s' (%d candidate(s), %d series in the study)",
            uid,
            chosen.label(),
            selection.name,
            len(qualified),
            len(study.series),
        )
        return chosen
    reason, message = _explain_rejection(study, verdicts)
    logger.info("study %s not analysed: %s", uid, message)
    raise NotAnalyzedError(reason, message, study_instance_uid=uid)


def _explain_rejection(study: StudyInfo, verdicts: list[list[SeriesVerdict]]) -> tuple[NotAnalyzedReason, str]:
    # Per series, the selection under which it came closest (highest category = least fundamental failure).
    best: dict[str, SeriesVerdict] = {}
    for per_series in verdicts:
        for v in per_series:
            uid = v.series.series_instance_uid
            if uid not in best or (v.category or 0) > (best[uid].category or 0):
                best[uid] = v
    categories = [v.category for v in best.values()]
    rest = [c for c in categories if c != _Category.MODALITY]
    if not rest:
        reason = NotAnalyzedReason.WRONG_MODALITY
        summary = "no series of an accepted modality"
    elif all(c == _Category.LOCALIZER for c in rest):
        reason = NotAnalyzedReason.LOCALIZER_ONLY
        summary = "only localizer (scout) images"
    elif all(c == _Category.TOO_FEW for c in rest if c != _Category.LOCALIZER):
        reason = NotAnalyzedReason.TOO_FEW_SLICES
        summary = "too few slices"
    else:
        reason = NotAnalyzedReason.NO_USABLE_SERIES
        summary = "no series meets the selection rules"
    details = "; ".join(f"{v.series.label()}: {', '.join(v.failures)}" for v in best.values())
    return reason, f"study {study.study_instance_uid}: {summary}. Rejected {len(best)} series: {details}"


# --------------------------------------------------------------------------- small helpers
def _as_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(str(v) for v in value)
    return (str(value),) if str(value) else ()


def _as_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
