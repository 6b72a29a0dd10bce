"""The loaded model with its classifier and explainer: built once per process, shared by every study."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from monai_app.app_config import AppConfig
from monai_app.pipeline.gradcam import Explainer
from monai_app.pipeline.network import ModelConfig, load_artifact, resolve_model_dir
from monai_app.pipeline.slice_classifier import SliceClassifier, pick_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelBundle:
    model: torch.nn.Module
    config: ModelConfig
    classifier: SliceClassifier
    explainer: Explainer
    folder: Path

    @classmethod
    def load(cls, model_path: str | Path | None, app_config: AppConfig) -> ModelBundle:
        """Load and verify the artifact (sha256, Grad-CAM layer); raises ModelArtifactError when missing."""
        folder = resolve_model_dir(model_path)
        model, config = load_artifact(folder, device=pick_device(app_config.device))
        classifier = SliceClassifier(model, config, batch_size=app_config.batch_size, precision=app_config.precision)
        explainer = Explainer(model, config)
        # warm-up: oneDNN builds its kernels on the first call of each shape; pay that at start, not per study
        zeros = torch.zeros(app_config.batch_size, config.in_channels, config.input_size, config.input_size)
        classifier(zeros)
        explainer(zeros[:1])
        logger.info("model %s %s loaded from %s (%s, %s)", config.name, config.version, folder, classifier.device, classifier.precision)
        return cls(model=model, config=config, classifier=classifier, explainer=explainer, folder=folder)
