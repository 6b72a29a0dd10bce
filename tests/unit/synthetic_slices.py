"""Tiny brain-window slices with known labels for the training and first-stage tests."""

from __future__ import annotations

import numpy as np


def head_slice(size: int, positive: bool, seed: int) -> np.ndarray:
    """A ``size`` x ``size`` 8-bit head (skull ring 255, brain ~90, noise) with, for positives, a bright blob (200)
    at a random place inside; the geometry scales with ``size`` (64 px: head radius 28, blob radius 4-7)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    head, skull = 28 / 64 * size, 25 / 64 * size
    img = np.where(r < head, 90.0, 0.0)
    img[(r >= skull) & (r < head)] = 255
    if positive:
        cy, cx = rng.integers(round(20 / 64 * size), round(44 / 64 * size), 2)
        img[np.hypot(yy - cy, xx - cx) < rng.integers(4, 8)] = 200
    img += rng.normal(0, 3, img.shape) * (r < head)
    return np.clip(img, 0, 255).astype(np.uint8)
