from __future__ import annotations

import numpy as np
import pytest

from monai_app.pipeline.preprocess import (
    Box,
    fit_to_input,
    head_box,
    page_mask,
    picture_to_input,
    to_gray_uint8,
    uncrop_map,
)


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


def _skull_head(size=256, radius=100):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    img = np.zeros((size, size), dtype=np.uint8)
    img[r < radius] = 255  # skull (saturated in the brain window)
    img[r < 0.9 * radius] = 100  # brain
    return img


def test_a_white_page_around_the_slice_becomes_air():
    slice_ = _skull_head()
    page = np.full((360, 330), 250, dtype=np.uint8)  # a figure: margin, caption below
    page[20:276, 37:293] = slice_
    page[300:308, 40:200] = 10  # caption text
    mask = page_mask(page)
    assert mask is not None
    assert mask[0].all() and mask[-1].all() and not mask[20:276, 37:293].any()  # the page, not the slice or skull
    x_page, _ = fit_to_input(page[None], 64)
    x_slice, _ = fit_to_input(slice_[None], 64)
    corr = np.corrcoef(x_page.numpy().ravel(), x_slice.numpy().ravel())[0, 1]
    assert corr > 0.9, corr  # the bare slice's input (without the mask the page would be the "head": about 0)
    rgb = np.repeat(page[..., None], 3, axis=-1)
    np.testing.assert_allclose(picture_to_input(rgb, 64)[0].numpy(), x_page.numpy())


def test_a_tight_crop_through_the_skull_is_no_page():
    head = _skull_head()
    for keep in (0.7, 0.8, 0.9):  # the skull meets the sides in arcs, as in real zoomed-in pictures
        half = int(100 * keep)
        crop = head[128 - half : 128 + half, 128 - half : 128 + half]
        assert page_mask(crop) is None, keep
    assert page_mask(_head()) is None  # air around the head
    assert page_mask(np.zeros((2, 2), np.uint8)) is None


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
