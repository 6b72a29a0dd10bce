from __future__ import annotations

import numpy as np
import pytest

from monai_app.pipeline.windowing import Window, WindowPreset, uint8_to_unit, window_stack, window_to_uint8


def test_brain_window_hand_computed_values():
    # level 40, width 80: 0 HU -> 0, 40 HU -> 127.5 -> 128 (round half to even gives 128), 80 HU -> 255
    hu = np.array([-1000.0, 0.0, 10.0, 40.0, 79.0, 80.0, 3000.0], dtype=np.float32)
    got = window_to_uint8(hu, WindowPreset.BRAIN.value)
    expected = np.array([0, 0, round(10 * 255 / 80), 128, round(79 * 255 / 80), 255, 255], dtype=np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.uint8


def test_unit_scale_matches_png_training_scale():
    # training reads 8-bit PNGs and divides by 255: serving must produce exactly the same floats
    levels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(uint8_to_unit(levels), levels.astype(np.float32) / 255.0)


def test_window_stack_shapes_and_channels():
    hu = np.zeros((3, 4, 5), dtype=np.float32)
    out = window_stack(hu, (WindowPreset.BRAIN.value, WindowPreset.SUBDURAL.value))
    assert out.shape == (3, 2, 4, 5)
    assert out[0, 0, 0, 0] == 0.0  # 0 HU is the lower edge of the brain window
    assert out[0, 1, 0, 0] == pytest.approx(round((0 - (-20)) * 255 / 200) / 255)


def test_invalid_window_and_unknown_preset():
    with pytest.raises(ValueError):
        Window(40, 0)
    with pytest.raises(ValueError):
        WindowPreset.by_name("lung-ish")
