"""From slice probabilities (ordered along z) to one study probability, decision and key slices.

Rule ``neighbour`` (default): a slice's support is ``0.5 * p[z] + 0.5 * max(p[z-1], p[z+1])``; the study
probability is the maximum support. A hemorrhage on 5 mm slabs nearly always spans two adjacent slabs,
so a real bleed keeps its score while an isolated single-slab spike (beam-hardening streak,
calcification) is damped by its quiet neighbours. ``max`` is plain maximum; ``topk_mean`` the mean of the
``k`` highest slices. Key slices are those whose support reaches the threshold (up to ``max_key_slices``,
highest first); for a negative study the single highest-support slice, so the radiologist sees what
was looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class AggregationRule(str, Enum):
    NEIGHBOUR = "neighbour"
    MAX = "max"
    TOPK_MEAN = "topk_mean"


@dataclass(frozen=True)
class Aggregate:
    probability: float
    positive: bool
    support: np.ndarray  # (Z,) float32 per-slice support after the rule
    key_slices: tuple[int, ...]
    rule: str


def slice_support(probabilities: np.ndarray, rule: AggregationRule, k: int = 2) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 1:
        raise ValueError(f"expected (Z,) slice probabilities, got shape {p.shape}")
    if rule is AggregationRule.NEIGHBOUR and len(p) > 1:
        padded = np.pad(p, 1, mode="constant", constant_values=0.0)
        neighbours = np.maximum(padded[:-2], padded[2:])
        return 0.5 * p + 0.5 * neighbours
    return p.copy()


def aggregate(
    probabilities: np.ndarray, threshold: float, rule: AggregationRule = AggregationRule.NEIGHBOUR, k: int = 2, max_key_slices: int = 3
) -> Aggregate:
    """Args: probabilities (Z,) in [0, 1], slices ordered along the slice normal. Returns the :class:`Aggregate`."""
    if len(probabilities) == 0:
        raise ValueError("no slices to aggregate")
    support = slice_support(probabilities, rule, k)
    if rule is AggregationRule.TOPK_MEAN:
        study = float(np.mean(np.sort(support)[::-1][: max(1, k)]))
    else:
        study = float(support.max())
    positive = study >= threshold
    order = np.lexsort((-np.asarray(probabilities), -support))  # by support, ties by the slice's own probability
    if positive:
        keys = tuple(int(i) for i in order if support[i] >= threshold)[:max_key_slices] or (int(order[0]),)
    else:
        keys = (int(order[0]),)
    return Aggregate(probability=study, positive=positive, support=support, key_slices=keys, rule=rule.value)
