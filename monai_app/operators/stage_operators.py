"""One thin MONAI Deploy operator per stage: receive the study state, call the stage, emit.

Every operator passes a :class:`StudyState` on port ``state``. A stage that finds bad input sets a
NOT_ANALYZED result on the state; later operators then pass it straight through to the writer, which
still writes an SC and an SR saying why (a NOT_ANALYZED study is reported, never dropped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

from dicom_io.errors import NotAnalyzedError
from dicom_io.result import StudyResult, TriageDecision
from dicom_io.series_select import ScanResult, StudyInfo
from monai_app import stages
from monai_app.app_config import AppConfig
from monai_app.model_bundle import ModelBundle

logger = logging.getLogger(__name__)
PORT = "state"


@dataclass
class StudyState:
    """What flows between operators for one study; each stage fills its field."""

    input_dir: Path
    study_uid: str = ""
    sources: list[Any] = field(default_factory=list)  # pydicom headers to write outputs into the study
    study: StudyInfo | None = None
    selected: stages.Selected | None = None
    prepared: stages.Prepared | None = None
    probabilities: np.ndarray | None = None
    result: StudyResult | None = None
    images: list[tuple[int | None, np.ndarray]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.result is not None and self.result.decision is TriageDecision.NOT_ANALYZED


class _StageOperator(Operator):
    """Receives a state, runs ``stage`` unless the study is already NOT_ANALYZED, emits the state."""

    def __init__(self, fragment: Fragment, *args: Any, bundle: ModelBundle, app_config: AppConfig, **kwargs: Any) -> None:
        self.bundle = bundle
        self.app_config = app_config
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(PORT)
        spec.output(PORT)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        state: StudyState = op_input.receive(PORT)
        if not state.finished:
            try:
                self.stage(state)
            except NotAnalyzedError as err:
                logger.info("study %s not analysed in %s: %s", state.study_uid, self.name, err)
                state.result = stages.not_analyzed(state.study_uid, err, self.bundle.config)
        op_output.emit(state, PORT)

    def stage(self, state: StudyState) -> None:
        raise NotImplementedError


class StudyLoaderOperator(Operator):
    """Source: scans the input folder (headers only) and picks the study; emits a fresh state."""

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        input_dir: Path,
        bundle: ModelBundle,
        scan: ScanResult | None = None,
        study_uid: str | None = None,
        on_start: Any = None,
        **kwargs: Any,
    ) -> None:
        self.input_dir = Path(input_dir)
        self.on_start = on_start
        self.bundle = bundle
        self.scan = scan
        self.study_uid = study_uid
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output(PORT)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        if self.on_start is not None:
            self.on_start()
        state = StudyState(input_dir=self.input_dir)
        try:
            scan = self.scan or stages.scan(self.input_dir)
            study = stages.pick_study(scan, self.study_uid)
            state.study_uid = study.study_instance_uid
            state.sources = stages.any_headers(study)
            state.study = study
        except NotAnalyzedError as err:
            state.result = stages.not_analyzed(state.study_uid, err, self.bundle.config)
        op_output.emit(state, PORT)


class SeriesSelectorOperator(_StageOperator):
    def stage(self, state: StudyState) -> None:
        assert state.study is not None
        state.selected = stages.select(state.study, self.app_config)
        state.sources = list(state.selected.series.datasets)


class VolumeOperator(_StageOperator):
    """Series -> HU volume -> slabs -> windowed model inputs."""

    def stage(self, state: StudyState) -> None:
        assert state.selected is not None
        state.prepared = stages.prepare(state.selected, self.bundle.config, self.app_config)


class SliceClassifierOperator(_StageOperator):
    def stage(self, state: StudyState) -> None:
        assert state.prepared is not None
        state.probabilities = stages.classify(state.prepared, self.bundle.classifier)


class AggregationOperator(_StageOperator):
    def stage(self, state: StudyState) -> None:
        assert state.prepared is not None and state.probabilities is not None
        state.result = stages.conclude(state.prepared, state.probabilities, self.bundle.config, self.app_config)


class GradCamOperator(_StageOperator):
    def stage(self, state: StudyState) -> None:
        assert state.prepared is not None and state.result is not None
        state.images = list(stages.explain(state.prepared, state.result, self.bundle.explainer, self.app_config))


class DicomWriterOperator(Operator):
    """Sink: writes SC(s), SR and report.json into the output folder; hands the state to ``on_done``."""

    def __init__(self, fragment: Fragment, *args: Any, output_dir: Path, on_done: Any = None, **kwargs: Any) -> None:
        self.output_dir = Path(output_dir)
        self.on_done = on_done
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(PORT)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        state: StudyState = op_input.receive(PORT)
        assert state.result is not None
        images = state.images or stages.not_analyzed_images(state.result)
        state.written = stages.write_outputs(state.sources, state.result, images, self.output_dir, state.prepared)
        logger.info("study %s: %s, wrote %d file(s) to %s", state.study_uid, state.result.decision.value, len(state.written), self.output_dir)
        if self.on_done is not None:
            self.on_done(state)
