"""Run the application on a folder: the entry the CLI, the MAP contract and the DICOM service share.

:class:`StudyRunner` loads the model once and runs :class:`ICHTriageApp` once per study. A folder with
several studies is analysed study by study, each into ``OUT/<StudyInstanceUID>/``. Bad input never raises:
it becomes a NOT_ANALYZED result that is written like any other.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from dicom_io.errors import NotAnalyzedError
from dicom_io.result import NotAnalyzedReason, StudyResult
from monai_app import stages
from monai_app.app import ICHTriageApp
from monai_app.app_config import AppConfig
from monai_app.model_bundle import ModelBundle
from monai_app.operators.stage_operators import StudyState
from monai_app.signals import SignalDispositions

logger = logging.getLogger(__name__)


class StudyRunner:
    """Args:
    model_path: model artifact folder (or its model.pt); None for the bundled model.
    app_config: application settings; defaults when None.
    """

    def __init__(self, model_path: str | Path | None = None, app_config: AppConfig | None = None) -> None:
        self.app_config = app_config or AppConfig()
        self.bundle = ModelBundle.load(model_path, self.app_config)
        self.signals = SignalDispositions()  # the caller's handlers (the service's SIGTERM: finish or park the job)

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, app_config: AppConfig) -> StudyRunner:
        """A runner around an already loaded model (benchmarks time the study without the load)."""
        runner = cls.__new__(cls)
        runner.app_config, runner.bundle, runner.signals = app_config, bundle, SignalDispositions()
        return runner

    def run(self, input_dir: Path, output_dir: Path) -> StudyResult:
        """Analyse the one study in ``input_dir``; outputs in ``output_dir``. Returns its result."""
        results = self.run_folder(input_dir, output_dir)
        return results[0]

    def run_folder(self, input_dir: Path, output_dir: Path) -> list[StudyResult]:
        """Analyse every study in ``input_dir``: one result per study (a single NOT_ANALYZED when none)."""
        input_dir, output_dir = Path(input_dir), Path(output_dir)
        try:
            scan = stages.scan(input_dir)
        except NotAnalyzedError as err:
            result = stages.not_analyzed("", err, self.bundle.config)
            stages.write_outputs([], result, [], output_dir)
            return [result]
        uids = sorted(scan.studies)
        if len(uids) > 1:
            logger.info("%d studies in %s: each analysed into its own folder", len(uids), input_dir)
        return [self._run_study(input_dir, output_dir if len(uids) == 1 else output_dir / uid, scan, uid) for uid in uids]

    def _run_study(self, input_dir: Path, output_dir: Path, scan: stages.ScanResult, study_uid: str) -> StudyResult:
        done: list[StudyState] = []
        try:
            ICHTriageApp(
                input_dir, output_dir, self.bundle, self.app_config, scan=scan, study_uid=study_uid, on_start=self.signals.restore, on_done=done.append
            ).run()
            if not done:
                raise RuntimeError("the application finished without writing a result")
            result = done[0].result
            assert result is not None
            return result
        except Exception as exc:  # an internal failure must still produce a reported NOT_ANALYZED result
            logger.exception("study %s: internal error", study_uid)
            if output_dir.exists():
                shutil.rmtree(output_dir)
            err = NotAnalyzedError(NotAnalyzedReason.INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
            result = stages.not_analyzed(study_uid, err, self.bundle.config)
            sources = stages.any_headers(scan.studies[study_uid])
            stages.write_outputs(sources, result, stages.not_analyzed_images(result), output_dir)
            return result
