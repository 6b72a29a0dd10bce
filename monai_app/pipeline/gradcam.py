"""Grad-CAM (MONAI's) on the classifier's 'any hemorrhage' output.

Grad-CAM needs an eager model with forward/backward hooks; the target layer is checked when the
explainer is built so a model whose layer names changed fails loudly instead of explaining nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.visualize import GradCAM

from monai_app.pipeline.network import ModelConfig


class GradCamLayerError(ValueError):
    """The configured Grad-CAM target layer does not exist in the model."""


def check_target_layer(model: torch.nn.Module, layer: str) -> torch.nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules:
        candidates = [n for n, m in modules.items() if isinstance(m, torch.nn.Sequential) and n]
        raise GradCamLayerError(f"Grad-CAM target layer {layer!r} not in model; candidates: {candidates}")
    return modules[layer]


def unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1] with high = drove the score.

    MONAI's ``default_normalizer`` scales (min, max) to (1, 0), an inverted map meant for its own colour
    convention; the overlay draws high values in red, so the maps are scaled here the intuitive way.
    """
    shape = (-1,) + (1,) * (maps.ndim - 1)
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


class Explainer:
    """Grad-CAM maps for class ``class_index`` (0 = any hemorrhage), shape (N, S, S) float32 in [0, 1]."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig, class_index: int = 0) -> None:
        check_target_layer(model, config.gradcam_layer)
        self.model = model
        self.class_index = class_index
        self.cam = GradCAM(nn_module=model, target_layers=config.gradcam_layer, postprocessing=unit_scale)

    def __call__(self, inputs: torch.Tensor) -> np.ndarray:
        """Args: inputs (N, C, S, S) float32 in [0, 1]. Returns (N, S, S) maps, each min-max scaled to [0, 1].

        One slice per backward pass: the activations kept for the gradient are the app's largest memory cost.
        """
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        maps = []
        try:
            with torch.enable_grad():
                for x in inputs.float():
                    maps.append(self.cam(x[None].to(device).contiguous(), class_idx=self.class_index)[0, 0].detach().float().cpu().numpy())
        finally:
            self.model.train(was_training)
        return np.stack(maps) if maps else np.zeros((0, *inputs.shape[-2:]), dtype=np.float32)
