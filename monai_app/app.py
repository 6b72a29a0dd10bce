"""The MONAI Deploy application: one study folder in, Grad-CAM Secondary Capture(s), an SR and report.json out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application

from dicom_io.series_select import ScanResult
from monai_app.app_config import AppConfig
from monai_app.model_bundle import ModelBundle
from monai_app.operators.stage_operators import (
    PORT,
    AggregationOperator,
    DicomWriterOperator,
    GradCamOperator,
    SeriesSelectorOperator,
    SliceClassifierOperator,
    StudyLoaderOperator,
    StudyState,
    VolumeOperator,
)

logger = logging.getLogger(__name__)


class ICHTriageApp(Application):
    """Head CT study -> series selection -> HU volume -> classifier -> aggregation -> Grad-CAM -> DICOM.

    Args:
        input_dir: folder with the study's DICOM files (nested folders too).
        output_dir: where the SC(s), the SR and report.json go.
        bundle: the model, loaded once per process (see :class:`ModelBundle`).
        app_config: selection rules, slab thickness, aggregation.
        scan: the folder's headers when the caller already scanned it.
        study_uid: which study of the folder to analyse (required when it holds several).
        on_start: called when the graph starts, before the first stage (the runner puts back its signal handlers).
        on_done: called with the final :class:`StudyState`.
    """

    def __init__(
        self,
        input_dir: Path,
        output_dir: Path,
        bundle: ModelBundle,
        app_config: AppConfig,
        scan: ScanResult | None = None,
        study_uid: str | None = None,
        on_start: Callable[[], Any] | None = None,
        on_done: Callable[[StudyState], Any] | None = None,
    ) -> None:
        self.input_dir, self.output_dir = Path(input_dir), Path(output_dir)
        self.bundle, self.app_config = bundle, app_config
        self.scan, self.study_uid, self.on_start, self.on_done = scan, study_uid, on_start, on_done
        super().__init__()
        self.name = "ich-triage"
        self.description = "Intracranial hemorrhage triage of head CT with Grad-CAM (research use only)"

    def compose(self) -> None:
        common = {"bundle": self.bundle, "app_config": self.app_config}
        study_loader = StudyLoaderOperator(
            self,
            CountCondition(self, 1),
            input_dir=self.input_dir,
            bundle=self.bundle,
            scan=self.scan,
            study_uid=self.study_uid,
            on_start=self.on_start,
            name="study_loader",
        )
        series_selector = SeriesSelectorOperator(self, name="series_selector", **common)
        volume = VolumeOperator(self, name="volume", **common)
        slice_classifier = SliceClassifierOperator(self, name="slice_classifier", **common)
        aggregation = AggregationOperator(self, name="aggregation", **common)
        gradcam = GradCamOperator(self, name="gradcam", **common)
        dicom_writer = DicomWriterOperator(self, output_dir=self.output_dir, on_done=self.on_done, name="dicom_writer")

        self.add_flow(study_loader, series_selector, {(PORT, PORT)})
        self.add_flow(series_selector, volume, {(PORT, PORT)})
        self.add_flow(volume, slice_classifier, {(PORT, PORT)})
        self.add_flow(slice_classifier, aggregation, {(PORT, PORT)})
        self.add_flow(aggregation, gradcam, {(PORT, PORT)})
        self.add_flow(gradcam, dicom_writer, {(PORT, PORT)})
