"""The application's stages as plain functions: what each SDK operator calls, and what tests call directly.

Data flow (one study): ``select`` -> ``prepare`` (volume, slabs, windowing, model input) -> ``classify``
-> ``conclude`` (aggregation into a StudyResult) -> ``explain`` (Grad-CAM renders) -> ``write_outputs``.
Bad input raises :class:`dicom_io.errors.NotAnalyzedError`; :func:`not_analyzed` turns it into a result.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch

from dicom_io.errors import NotAnalyzedError
from dicom_io.result import ModelIdentity, NotAnalyzedReason, SliceScore, StudyResult, TriageDecision
from dicom_io.sc_writer import build_secondary_capture, derived_uid
from dicom_io.series_select import ScanResult, SeriesInfo, StudyInfo, load_selection_rules, scan_folder, select_series
from dicom_io.series_to_volume import build_volume, combine_slabs
from dicom_io.sr_writer import build_structured_report
from monai_app.app_config import AppConfig
from monai_app.pipeline.aggregation import AggregationRule, aggregate
from monai_app.pipeline.gradcam import Explainer
from monai_app.pipeline.network import ModelConfig
from monai_app.pipeline.overlay import blend, burn_text, message_image
from monai_app.pipeline.preprocess import Box, fit_to_input, resize, uncrop_map
from monai_app.pipeline.slice_classifier import SliceClassifier
from monai_app.pipeline.windowing import WindowPreset, window_to_uint8

logger = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9901  # SC and SR go in two series: one modality per series (PS3.3 C.7.3.1)
SR_SERIES_NUMBER = 9902
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class Selected:
    """The study being analysed and the series chosen in it."""

    study: StudyInfo
    series: SeriesInfo


@dataclass
class Prepared:
    """Model-ready slabs of the selected series (the HU volume itself is not kept: it is the largest array).

    ``inputs``: (S, C, size, size) float32 in [0, 1]; ``display``: (S, Y, X) uint8 brain window at source
    resolution; ``boxes``: the head crop of each slab; ``members``: which source slices (indices into
    ``datasets``, in z order) each slab averages; ``z_mm``: (S,) slab centres along the slice normal.
    """

    selected: Selected
    datasets: tuple[pydicom.Dataset, ...]
    members: tuple[tuple[int, ...], ...]
    z_mm: np.ndarray
    inputs: torch.Tensor
    display: np.ndarray
    boxes: list[Box]
    warnings: list[str] = field(default_factory=list)

    def slab_sources(self, slab: int) -> list[pydicom.Dataset]:
        return [self.datasets[j] for j in self.members[slab]]


def model_identity(config: ModelConfig) -> ModelIdentity:
    return ModelIdentity(name=config.name, version=config.version, sha256=config.sha256)


# ------------------------------------------------------------------ stages
def scan(input_dir: Path) -> ScanResult:
    """Headers of every file under ``input_dir``; raises NotAnalyzedError when there is no DICOM at all."""
    result = scan_folder(input_dir)
    if not result.studies:
        detail = f"; skipped {len(result.skipped)} file(s), e.g. {result.skipped[0][0].name}: {result.skipped[0][1]}" if result.skipped else ""
        raise NotAnalyzedError(NotAnalyzedReason.NO_DICOM, f"no DICOM CT study in {input_dir}{detail}")
    return result


def pick_study(scan_result: ScanResult, study_uid: str | None = None) -> StudyInfo:
    """The one study to analyse: ``study_uid`` if given, else the only study in the folder."""
    if study_uid is not None:
        if study_uid not in scan_result.studies:
            raise NotAnalyzedError(NotAnalyzedReason.NO_DICOM, f"study {study_uid} not found in the input")
        return scan_result.studies[study_uid]
    if len(scan_result.studies) > 1:
        raise NotAnalyzedError(
            NotAnalyzedReason.MULTIPLE_STUDIES, f"{len(scan_result.studies)} studies in one input: {sorted(scan_result.studies)}; analyse them one at a time"
        )
    return next(iter(scan_result.studies.values()))


def select(study: StudyInfo, app_config: AppConfig) -> Selected:
    """Pick the series to analyse by the site's selection rules."""
    rules = load_selection_rules(app_config.selection_rules)
    return Selected(study=study, series=select_series(study, rules, target_thickness_mm=app_config.slab_mm))


def prepare(selected: Selected, config: ModelConfig, app_config: AppConfig) -> Prepared:
    """HU volume -> slabs -> windows -> head crop -> model input, with the model's own preprocessing."""
    volume = build_volume(selected.series)
    slabs = combine_slabs(volume, app_config.slab_mm)
    windows = config.window_values
    inputs, boxes, display = [], [], []
    for hu in slabs.hu:
        channels = np.stack([window_to_uint8(hu, w) for w in windows])
        x, box = fit_to_input(channels, config.input_size, config.crop_to_head)
        inputs.append(x)
        boxes.append(box)
        display.append(channels[0] if windows[0] == WindowPreset.BRAIN.value else window_to_uint8(hu, WindowPreset.BRAIN.value))
    return Prepared(
        selected=selected,
        datasets=tuple(volume.datasets),
        members=slabs.members,
        z_mm=np.asarray(slabs.z_mm),
        inputs=torch.stack(inputs),
        display=np.stack(display),
        boxes=boxes,
        warnings=list(volume.warnings),
    )


def classify(prepared: Prepared, classifier: SliceClassifier) -> np.ndarray:
    """(S, K) probabilities, one row per slab in z order."""
    return classifier(prepared.inputs)


def conclude(prepared: Prepared, probabilities: np.ndarray, config: ModelConfig, app_config: AppConfig) -> StudyResult:
    """Aggregate slab probabilities into the study result (decision, probability, key slices)."""
    rule = AggregationRule(app_config.aggregation)
    agg = aggregate(probabilities[:, 0], config.threshold, rule, max_key_slices=app_config.max_key_slices)
    slices = tuple(
        SliceScore(
            index=i,
            z_mm=round(float(prepared.z_mm[i]), 3),
            probability=round(float(probabilities[i, 0]), 5),
            sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in prepared.slab_sources(i)),
        )
        for i in range(len(probabilities))
    )
    subtypes = {name: round(float(probabilities[:, k].max()), 5) for k, name in enumerate(config.classes) if k > 0}
    series = prepared.selected.series
    return StudyResult(
        study_instance_uid=prepared.selected.study.study_instance_uid,
        decision=TriageDecision.POSITIVE if agg.positive else TriageDecision.NEGATIVE,
        model=model_identity(config),
        threshold=config.threshold,
        probability=round(agg.probability, 5),
        series_instance_uid=series.series_instance_uid,
        series_description=series.series_description,
        slices=slices,
        key_slices=agg.key_slices,
        subtype_probabilities=subtypes,
        warnings=tuple(prepared.warnings),
        aggregation=f"{agg.rule}: support = 0.5*p[z] + 0.5*max(p[z-1], p[z+1]); study = max support"
        if agg.rule == AggregationRule.NEIGHBOUR.value
        else agg.rule,
    )


def explain(prepared: Prepared, result: StudyResult, explainer: Explainer, app_config: AppConfig) -> list[tuple[int, np.ndarray]]:
    """Grad-CAM on the key slabs only, blended over the brain window: [(slab index, (N, N, 3) uint8)]."""
    keys = list(result.key_slices)
    maps = explainer(prepared.inputs[keys])
    rendered = []
    for key, cam in zip(keys, maps, strict=True):
        gray = prepared.display[key]
        full = uncrop_map(cam, prepared.boxes[key], gray.shape)
        rgb = blend(gray, full)
        side = app_config.sc_size
        if rgb.shape[:2] != (side, side):
            rgb = resize(np.moveaxis(rgb, -1, 0).astype(np.float32), side).clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
        rendered.append((key, burn_text(rgb, result_lines(result, key))))
    return rendered


def result_lines(result: StudyResult, key: int | None = None) -> list[str]:
    """The text burned into a Secondary Capture."""
    if result.decision is TriageDecision.NOT_ANALYZED:
        return [
            "ICH triage: NOT ANALYZED",
            f"Reason: {result.reason.value if result.reason else ''}",
            *textwrap.wrap(result.message, 60),
            f"Model {result.model.name} {result.model.version}",
        ]
    verdict = "hemorrhage suspected" if result.decision is TriageDecision.POSITIVE else "no hemorrhage detected"
    lines = [f"ICH triage: {result.decision.value} ({verdict})", f"Study probability {result.probability:.2f} (threshold {result.threshold:.2f})"]
    if key is not None and result.slices:
        s = result.slices[key]
        lines.append(f"Slice {key + 1} of {len(result.slices)}, z {s.z_mm:.1f} mm, p {s.probability:.2f}")
    lines.append(f"Model {result.model.name} {result.model.version}; Grad-CAM red = what drove the score")
    return lines


def not_analyzed(study_uid: str, error: NotAnalyzedError, config: ModelConfig) -> StudyResult:
    return StudyResult(
        study_instance_uid=study_uid,
        decision=TriageDecision.NOT_ANALYZED,
        model=model_identity(config),
        threshold=config.threshold,
        reason=error.reason,
        message=error.message,
    )


def write_outputs(
    sources: Sequence[pydicom.Dataset], result: StudyResult, images: Sequence[tuple[int | None, np.ndarray]], output_dir: Path, prepared: Prepared | None = None
) -> list[Path]:
    """Write the Secondary Capture(s), the SR and report.json into ``output_dir``.

    UIDs are derived from (study, model version, role, index) so a re-run or a re-send of the same result
    carries the same UIDs and a PACS stores it once. Without any DICOM source (nothing readable was
    received) only report.json is written: there is no study to put DICOM objects into.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if sources:
        study_uid = result.study_instance_uid
        # same input + same model -> same UIDs (a re-run after a crash is stored once by the PACS);
        # a study that grew since (more instances) gets new UIDs: a new result, not an overwrite
        inputs = sorted(str(ds.SOPInstanceUID) for ds in (prepared.datasets if prepared else sources))
        model = (study_uid, result.model.name, result.model.version, *inputs)
        all_refs = list(sources) if prepared is None else list(prepared.datasets)
        for number, (key, rgb) in enumerate(images, start=1):
            refs = all_refs if prepared is None or key is None else prepared.slab_sources(key)
            sc = build_secondary_capture(
                sources,
                rgb,
                result,
                series_instance_uid=derived_uid(*model, "sc-series"),
                series_number=SC_SERIES_NUMBER,
                instance_number=number,
                referenced=refs,
                sop_instance_uid=derived_uid(*model, "sc", number),
            )
            path = output_dir / f"sc_{number:02d}.dcm"
            sc.save_as(path, enforce_file_format=True)
            written.append(path)
        key_refs = all_refs if prepared is None else [ds for k in result.key_slices for ds in prepared.slab_sources(k)]
        sr = build_structured_report(
            sources,
            result,
            series_instance_uid=derived_uid(*model, "sr-series"),
            series_number=SR_SERIES_NUMBER,
            instance_number=1,
            referenced=key_refs,
            sop_instance_uid=derived_uid(*model, "sr"),
        )
        path = output_dir / "sr.dcm"
        sr.save_as(path, enforce_file_format=True)
        written.append(path)
    report = output_dir / REPORT_FILE
    report.write_text(result.to_json())
    written.append(report)
    return written


def not_analyzed_images(result: StudyResult) -> list[tuple[int | None, np.ndarray]]:
    return [(None, message_image(result_lines(result)))]


def any_headers(study: StudyInfo, limit: int = 1) -> list[pydicom.Dataset]:
    """Some header of the study, for writing NOT_ANALYZED outputs into it."""
    for series in study.series.values():
        if series.datasets:
            return list(series.datasets[:limit])
    return []
