"""Application settings that are not the model's: series selection rules, slab thickness, aggregation, outputs.

The model's own preprocessing (windows, input size, threshold) comes from the model artifact, never from here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from monai_app.pipeline.aggregation import AggregationRule

CONFIG_DIR = Path(__file__).resolve().parent / "config"
DEFAULT_RULES = CONFIG_DIR / "selection_rules.json"


@dataclass(frozen=True)
class AppConfig:
    """Args:
    selection_rules: path of the SDK-format series selection rules JSON.
    slab_mm: thin slices are averaged into slabs of about this thickness before classification.
    aggregation: study aggregation rule (see ``monai_app.pipeline.aggregation``).
    max_key_slices: Secondary Captures written for a positive study (one per key slice).
    batch_size: slices per forward pass.
    precision: 'auto' (bf16 where the CPU has it natively, or CUDA), 'fp32' or 'bf16'.
    device: 'auto', 'cpu' or 'cuda[:N]'.
    sc_size: side in pixels of the Secondary Capture (the key slice is resampled to it).
    """

    selection_rules: str = str(DEFAULT_RULES)
    slab_mm: float = 5.0
    aggregation: str = AggregationRule.NEIGHBOUR.value
    max_key_slices: int = 3
    batch_size: int = 16
    precision: str = "auto"
    device: str = "auto"
    sc_size: int = 512

    def __post_init__(self) -> None:
        AggregationRule(self.aggregation)
        if self.slab_mm < 0:
            raise ValueError(f"slab_mm must be >= 0, got {self.slab_mm}")
        if not 1 <= self.max_key_slices <= 16:
            raise ValueError(f"max_key_slices must be in 1..16, got {self.max_key_slices}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    @classmethod
    def from_file(cls, path: str | Path | None, **overrides: Any) -> AppConfig:
        data: dict[str, Any] = json.loads(Path(path).read_text()) if path else {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown app config keys in {path}: {sorted(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
