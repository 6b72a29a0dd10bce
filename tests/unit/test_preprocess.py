from __future__ import annotations

import numpy as np
import pytest

from monai_app.pipeline.preprocess import Box, fit_to_input, head_box, picture_to_input, to_gray_uint8, uncrop_map


def _head(size=256, radius=80, cx=128, cy=128):
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), dtype=np.uint8)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 120
    return img


def test_gray_from_rgb_rgba_and_16bit():
    gray = _head()
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full(gray.shape + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(to_gray_uint8(rgb), gray)
    np.testing.assert_array_equal(to_gray_uint8(rgba), gray)
    transparent = rgba.copy()
    transparent[..., 3] = 0
    assert to_gray_uint8(transparent).max() == 0  # composited over black
    wide = gray.astype(np.uint16) * 100
    assert to_gray_uint8(wide).max() == 255
    with pytest.raises(ValueError):
        to_gray_uint8(np.zeros((2, 3, 4, 5)))


def test_head_box_ignores_border_and_text():
    img = _head(radius=60, cx=100, cy=140)
    img[2:10, 200:250] = 255  # burned-in text strip, not connected to the head
    box = head_box(img)
    assert box.y0 <= 80 and box.y1 >= 200 and box.x0 <= 40 and box.x1 >= 160
    assert box.x1 < 200  # the text is not part of the head


def test_same_head_other_field_of_view_gives_similar_input():
    small = _head(size=256, radius=80)
    padded = np.zeros((512, 512), dtype=np.uint8)
    padded[128:384, 128:384] = small  # same head, twice the field of view
    a, _ = picture_to_input(small, 64)
    b, _ = picture_to_input(padded, 64)
    assert a.shape == b.shape == (1, 64, 64)
    assert float((a - b).abs().mean()) < 0.02


def test_blank_slice_uses_whole_image():
    blank = np.zeros((100, 120), dtype=np.uint8)
    assert head_box(blank) == Box(0, 100, 0, 120)
    x, _ = fit_to_input(blank[None], 32)
    assert x.shape == (1, 32, 32) and float(x.max()) == 0.0


def test_uncrop_map_places_heatmap_in_box():
    img = _head(size=200, radius=40, cx=60, cy=60)
    x, box = picture_to_input(img, 32)
    heat = np.ones((32, 32), dtype=np.float32)
    full = uncrop_map(heat, box, img.shape)
    assert full.shape == img.shape
    assert full[60, 60] > 0.9 and full[180, 180] == 0.0
