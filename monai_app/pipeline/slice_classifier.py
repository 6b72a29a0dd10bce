"""Slice-by-slice classification: model inputs to per-class probabilities.

Batched, ``torch.inference_mode``, channels_last. On CPUs with native bf16 (AVX-512 BF16 / AMX) the
convolutions run in bf16 autocast, which ``bench/bench_app.py`` measures at several times the fp32 rate
with probabilities within ~1e-2 of fp32; elsewhere fp32. CUDA when present.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch

from monai_app.pipeline.network import ModelConfig

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matrix math natively (AVX-512 BF16 or AMX), per /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on CUDA or on CPUs with native bf16, else 'fp32'."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


class SliceClassifier:
    """Per-slice probabilities from a loaded model.

    Args:
        model: the eager network from :func:`monai_app.pipeline.network.load_artifact`.
        config: its config (class names).
        batch_size: slices per forward pass.
        precision: 'auto', 'fp32' or 'bf16'.
    """

    def __init__(self, model: torch.nn.Module, config: ModelConfig, batch_size: int = 16, precision: str = "auto") -> None:
        self.model = model
        self.config = config
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor) -> np.ndarray:
        """Args: inputs (N, C, S, S) float32 in [0, 1]. Returns (N, K) float32 sigmoid probabilities, K = len(classes)."""
        if inputs.ndim != 4 or inputs.shape[1] != self.config.in_channels:
            raise ValueError(f"expected (N, {self.config.in_channels}, S, S), got {tuple(inputs.shape)}")
        self.model.eval()
        out = []
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start : start + self.batch_size].to(self.device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                probs = torch.sigmoid(self.model(batch).float())
                if self.config.tta_flip:  # a head is left-right symmetric; a bleed on either side is a bleed
                    probs = 0.5 * (probs + torch.sigmoid(self.model(torch.flip(batch, dims=(-1,))).float()))
            out.append(probs.cpu().numpy())
        if not out:
            return np.zeros((0, len(self.config.classes)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)
