from __future__ import annotations

import numpy as np
import pytest

from monai_app.pipeline.aggregation import AggregationRule, aggregate


def test_isolated_spike_is_damped_by_quiet_neighbours():
    p = np.array([0.05, 0.05, 0.9, 0.05, 0.05])
    agg = aggregate(p, threshold=0.6)
    assert agg.probability == pytest.approx(0.5 * 0.9 + 0.5 * 0.05)
    assert not agg.positive
    assert agg.key_slices == (2,)  # negative: the highest-scoring slice is still shown


def test_bleed_over_adjacent_slices_keeps_its_score():
    p = np.array([0.05, 0.8, 0.9, 0.7, 0.05])
    agg = aggregate(p, threshold=0.6)
    assert agg.probability == pytest.approx(0.5 * 0.9 + 0.5 * 0.8)
    assert agg.positive
    assert agg.key_slices[0] == 2 and set(agg.key_slices) <= {1, 2, 3}


def test_max_and_topk_rules():
    p = np.array([0.1, 0.9, 0.1])
    assert aggregate(p, 0.5, AggregationRule.MAX).probability == pytest.approx(0.9)
    assert aggregate(p, 0.5, AggregationRule.TOPK_MEAN, k=2).probability == pytest.approx(0.5)


def test_single_slice_and_empty():
    assert aggregate(np.array([0.7]), 0.5).probability == pytest.approx(0.7)
    with pytest.raises(ValueError):
        aggregate(np.array([]), 0.5)


def test_key_slices_capped():
    p = np.full(10, 0.95)
    assert len(aggregate(p, 0.5, max_key_slices=3).key_slices) == 3
