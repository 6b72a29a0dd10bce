"""Render what the radiologist sees: the brain-window slice with the Grad-CAM map blended in red/yellow,
and the result and disclaimer burned in. Also the student app's three-panel view (image / heatmap / overlay).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dicom_io.result import NOT_FOR_DIAGNOSTIC_USE

_CAM_FLOOR = 0.5  # map values below this are not drawn: only what drove the decision is coloured


def hot_colormap(values: np.ndarray) -> np.ndarray:
    """(Y, X) in [0, 1] to (Y, X, 3) uint8: black -> red -> yellow -> white ('hot')."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return np.rint(rgb * 255).astype(np.uint8)


def blend(gray: np.ndarray, cam: np.ndarray, max_alpha: float = 0.65) -> np.ndarray:
    """Blend a Grad-CAM map over an 8-bit slice, inside the head only.

    Args:
        gray: (Y, X) uint8 brain-window slice.
        cam: (Y, X) float in [0, 1], same shape.
    Returns:
        (Y, X, 3) uint8: red (rising to yellow at the maximum) where the map is in its upper half, the plain
        slice elsewhere and outside the head (air is 0 in the brain window; the map means nothing there).
    """
    if gray.shape != cam.shape:
        raise ValueError(f"slice {gray.shape} and map {cam.shape} differ")
    cam = np.where(gray > 0, np.asarray(cam, dtype=np.float32), 0.0)
    strength = np.clip((cam - _CAM_FLOOR) / (1 - _CAM_FLOOR), 0, 1)
    base = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
    colour = np.stack([np.full_like(strength, 255.0), 255.0 * strength**2, np.zeros_like(strength)], axis=-1)
    alpha = (np.sqrt(strength) * max_alpha)[..., None]
    return np.rint(base * (1 - alpha) + colour * alpha).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def burn_text(rgb: np.ndarray, lines: Sequence[str], footer: str = NOT_FOR_DIAGNOSTIC_USE) -> np.ndarray:
    """Burn a text block (top left, on a dark band) and a footer line into an RGB image; returns a copy."""
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    size = max(10, img.width // 40)
    font = _font(size)
    pad = size // 3
    y = pad
    for line in lines:
        box = draw.textbbox((pad, y), line, font=font)
        draw.rectangle((box[0] - pad, box[1] - pad // 2, box[2] + pad, box[3] + pad // 2), fill=(0, 0, 0))
        draw.text((pad, y), line, font=font, fill=(255, 255, 255))
        y = box[3] + pad
    fbox = draw.textbbox((0, 0), footer, font=font)
    fx, fy = (img.width - (fbox[2] - fbox[0])) // 2, img.height - (fbox[3] - fbox[1]) - 2 * pad
    draw.rectangle((fx - pad, fy - pad // 2, fx + fbox[2] - fbox[0] + pad, fy + fbox[3] - fbox[1] + pad), fill=(0, 0, 0))
    draw.text((fx, fy), footer, font=font, fill=(255, 220, 0))
    return np.asarray(img)


def message_image(lines: Sequence[str], size: int = 512) -> np.ndarray:
    """A black (size, size, 3) image with text only: the Secondary Capture of a NOT_ANALYZED study."""
    return burn_text(np.zeros((size, size, 3), dtype=np.uint8), lines)


def three_panel(gray: np.ndarray, cam: np.ndarray, title: str) -> np.ndarray:
    """The student app's view, side by side: image | heatmap | overlay, with a title line; (Y, 3X, 3) uint8."""
    panels = [np.repeat(gray[..., None], 3, axis=-1), hot_colormap(cam), blend(gray, cam)]
    strip = np.concatenate(panels, axis=1)
    return burn_text(strip, [title, "image | Grad-CAM heatmap | overlay"])
