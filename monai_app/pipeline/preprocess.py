"""From a windowed slice or any 2D picture to the model's input tensor.

One definition for serving and training. Steps, in order:

1. ``to_gray_uint8``: any picture (grayscale, RGB, RGBA, 16-bit, any size) to one 8-bit channel; the
   student app's "accept any image", with alpha composited over black (the background of a CT display).
2. ``page_mask``: a light page around the slice (a figure from a journal or a web page) becomes air, as
   the black surround of a CT display: the network never saw a white frame, and the head search would take
   the page for the head.
3. ``head_box``: the bounding box of the largest bright object (the head), so crops, borders and
   burned-in text of other sources do not change the scale the network sees.
4. ``fit_to_input``: crop to that box with a margin, pad to a square, resize to the input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

_HEAD_THRESHOLD = 8  # 8-bit level; brain-window air is 0, soft tissue and bone are far above
_BOX_GRID = 128  # the head search runs on a coarse grid: fast and blind to thin text strokes
_MARGIN = 0.06
_PAGE_LEVEL = 200  # 8-bit level from which a pixel may belong to a light page
_PAGE_SIDE_SHARE = 0.8  # a page runs along this share of a side of the picture, on three sides or four


@dataclass(frozen=True)
class Box:
    """A crop box in pixel coordinates of the source image: rows [y0, y1), columns [x0, x1)."""

    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        if not (self.y1 > self.y0 and self.x1 > self.x0):
            raise ValueError(f"empty box {self}")


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """Any 2D picture to an 8-bit grayscale (Y, X) array.

    Accepts (Y, X), (Y, X, 1), (Y, X, 3) RGB and (Y, X, 4) RGBA, uint8 or wider integers or floats.
    RGB uses ITU-R BT.601 luma; RGBA is composited over black first. Wider ranges are min-max scaled.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        if arr.shape[-1] == 4:
            alpha = arr[..., 3:4].astype(np.float32) / (255.0 if arr.dtype == np.uint8 else float(arr[..., 3].max() or 1))
            arr = arr[..., :3].astype(np.float32) * alpha
        if arr.shape[-1] == 3:
            arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        else:
            arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D picture (Y, X[, C]), got shape {np.shape(image)}")
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 255:
        return np.rint(arr).astype(np.uint8)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def page_mask(gray: np.ndarray) -> np.ndarray | None:
    """The light page around a picture (a figure on a journal or web page) as a bool (Y, X) mask, or None.

    The page is one connected light region (level >= 200) that runs along at least three of the picture's
    four sides (80% of each): a frame around the content. A CT slice has air at its sides; where a tight
    crop cuts the skull, the bone meets the sides in arcs, mostly near the corners, so slices of any field of
    view have no page.
    """
    if gray.ndim != 2 or min(gray.shape) < 3:
        return None
    light = gray >= _PAGE_LEVEL
    sides = (light[0], light[-1], light[:, 0], light[:, -1])
    if sum(side.mean() >= _PAGE_SIDE_SHARE for side in sides) < 3:  # the common case, decided without labelling
        return None
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(light.astype(np.uint8))))
    sides = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
    on_sides = np.concatenate(sides)
    page = int(np.bincount(on_sides[on_sides > 0]).argmax())
    if sum((side == page).mean() >= _PAGE_SIDE_SHARE for side in sides) < 3:
        return None
    return labels == page


def head_box(gray: np.ndarray) -> Box:
    """Bounding box of the largest connected bright region of an 8-bit (Y, X) slice.

    Falls back to the whole image when nothing is bright (blank slices, slices above the vertex).
    """
    height, width = gray.shape
    step = max(1, max(height, width) // _BOX_GRID)
    coarse = gray[::step, ::step] > _HEAD_THRESHOLD
    if not coarse.any():
        return Box(0, height, 0, width)
    mask = sitk.GetImageFromArray(coarse.astype(np.uint8))
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    largest = sitk.GetArrayViewFromImage(labels) == 1
    rows = np.flatnonzero(largest.any(axis=1))
    cols = np.flatnonzero(largest.any(axis=0))
    y0, y1 = rows[0] * step, min(height, (rows[-1] + 1) * step)
    x0, x1 = cols[0] * step, min(width, (cols[-1] + 1) * step)
    if (y1 - y0) * (x1 - x0) < 0.02 * height * width:  # a speck, not a head
        return Box(0, height, 0, width)
    my, mx = int(_MARGIN * (y1 - y0)), int(_MARGIN * (x1 - x0))
    return Box(max(0, y0 - my), min(height, y1 + my), max(0, x0 - mx), min(width, x1 + mx))


def square_box(box: Box) -> tuple[int, int, int, int]:
    """The square (y0, y1, x0, x1) centred on ``box`` that holds it; may extend past the image."""
    side = max(box.y1 - box.y0, box.x1 - box.x0)
    cy, cx = (box.y0 + box.y1) // 2, (box.x0 + box.x1) // 2
    y0, x0 = cy - side // 2, cx - side // 2
    return y0, y0 + side, x0, x0 + side


def crop_square(channels: np.ndarray, box: Box) -> np.ndarray:
    """Crop (C, Y, X) to the square around ``box``, padding with 0 (air) outside the image."""
    y0, y1, x0, x1 = square_box(box)
    _, height, width = channels.shape
    out = np.zeros((channels.shape[0], y1 - y0, x1 - x0), dtype=channels.dtype)
    sy0, sy1, sx0, sx1 = max(0, y0), min(height, y1), max(0, x0), min(width, x1)
    out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = channels[:, sy0:sy1, sx0:sx1]
    return out


def resize(channels: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Resize (C, Y, X) to (C, size, size) float32 with antialiased bilinear interpolation."""
    t = torch.as_tensor(channels, dtype=torch.float32)[None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0]


def fit_to_input(channels_uint8: np.ndarray, size: int, crop_to_head: bool = True) -> tuple[torch.Tensor, Box]:
    """Windowed 8-bit channels (C, Y, X) to the model input (C, size, size) float32 in [0, 1].

    A light page around the picture (channel 0) becomes air in every channel, then the head box is found on
    channel 0 (the brain window). Returns the box so heatmaps can be mapped back.
    """
    if channels_uint8.ndim != 3 or channels_uint8.dtype != np.uint8:
        raise ValueError(f"expected uint8 (C, Y, X), got {channels_uint8.dtype} {channels_uint8.shape}")
    _, height, width = channels_uint8.shape
    page = page_mask(channels_uint8[0])
    if page is not None:
        channels_uint8 = channels_uint8.copy()
        channels_uint8[:, page] = 0
    box = head_box(channels_uint8[0]) if crop_to_head else Box(0, height, 0, width)
    square = crop_square(channels_uint8, box)
    return resize(square.astype(np.float32) / np.float32(255.0), size), box


def picture_to_input(image: np.ndarray, size: int, n_channels: int = 1, crop_to_head: bool = True) -> tuple[torch.Tensor, Box]:
    """Any picture taken as a brain-window image to the model input; repeated over ``n_channels``."""
    gray = to_gray_uint8(image)
    return fit_to_input(np.repeat(gray[None], n_channels, axis=0), size, crop_to_head)


def uncrop_map(heatmap: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Map a (h, w) map over the model input back onto the source slice of ``shape`` (Y, X), 0 outside."""
    y0, y1, x0, x1 = square_box(box)
    side = y1 - y0
    up = resize(np.asarray(heatmap, dtype=np.float32)[None], side)[0].numpy()
    out = np.zeros(shape, dtype=np.float32)
    height, width = shape
    sy0, sy1, sx0, sx1 = max(0, y0), min(height, y1), max(0, x0), min(width, x1)
    out[sy0:sy1, sx0:sx1] = up[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    return out
