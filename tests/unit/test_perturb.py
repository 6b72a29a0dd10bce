"""The evaluation stress test's perturbations: deterministic, readable as the serving reader reads files, and
the serving preprocessing undoes what it should (a screenshot's canvas and annotations)."""

from __future__ import annotations

import numpy as np
import pytest

from monai_app.pipeline.preprocess import fit_to_input, page_mask
from training.perturb import PERTURBATIONS, other_window, perturb


def head(shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot((yy - 120) / 100.0, (xx - 130) / 85.0)
    img = np.zeros(shape, dtype=np.uint8)
    img[r < 1.0] = 255  # skull
    img[r < 0.92] = 90  # brain
    img[np.hypot(yy - 90, xx - 160) < 14] = 200  # a bleed
    return img


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_each_perturbation_is_deterministic_8bit_and_changes_the_picture(name: str) -> None:
    gray = head()
    a, b = perturb(gray, name, "slice-1"), perturb(gray, name, "slice-1")
    assert a.dtype == np.uint8 and a.ndim == 2
    assert np.array_equal(a, b)
    assert a.shape != gray.shape or not np.array_equal(a, gray)


def test_keys_draw_different_changes() -> None:
    gray = head()
    assert perturb(gray, "screenshot", "a").shape == perturb(gray, "screenshot", "b").shape  # the canvas is fixed
    assert not np.array_equal(perturb(gray, "screenshot", "a"), perturb(gray, "screenshot", "b"))


def test_screenshot_is_undone_by_the_head_crop() -> None:
    # the slice sits smaller, off-centre, on a canvas with burned-in text: the head crop must find it again
    gray = head()
    x0, _ = fit_to_input(gray[None], 64)
    x1, _ = fit_to_input(perturb(gray, "screenshot", "s")[None], 64)
    corr = np.corrcoef(x0.numpy().ravel(), x1.numpy().ravel())[0, 1]
    assert corr > 0.9, corr


def test_figure_on_a_white_page_is_undone_by_the_page_mask_and_the_head_crop() -> None:
    gray = head()
    picture = perturb(gray, "figure", "f")
    page = page_mask(picture)
    assert page is not None and page[:3].all() and page[-3:].all()  # the page runs along the sides
    assert not page[picture < 100].any()  # nothing dark (the slice's air and brain, the caption) is page
    x0, _ = fit_to_input(gray[None], 64)
    x1, _ = fit_to_input(picture[None], 64)
    corr = np.corrcoef(x0.numpy().ravel(), x1.numpy().ravel())[0, 1]
    assert corr > 0.85, corr  # the arrow, the panel letter and JPEG remain


def test_other_window_keeps_what_the_picture_clipped() -> None:
    gray = head()
    out = np.asarray(other_window(gray, np.random.default_rng(0)))
    assert (out[gray == 0] == 0).all() and (out[gray == 255] == 255).all()
    brain, bleed = out[gray == 90].mean(), out[gray == 200].mean()
    assert 0 < bleed - brain < 200 - 90  # contrast compressed, order kept


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(head(), "nope", "k")
