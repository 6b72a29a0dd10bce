"""CT intensity windowing: Hounsfield units to the 8-bit display values the model was trained on.

This is the single definition of windowing, imported by serving (``monai_app``) and by training
(``training``). The shared training PNGs are brain-window (level 40, width 80) 8-bit images, so the
DICOM path quantises to the same 256 levels before scaling to [0, 1]; train and serve then see
exactly the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


@dataclass(frozen=True)
class Window:
    """A display window in HU: ``center`` (level) and ``width`` (PS3.3 C.11.2.1.2, linear function)."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"window width must be positive, got {self.width}")

    @property
    def lower(self) -> float:
        return self.center - self.width / 2.0

    @property
    def upper(self) -> float:
        return self.center + self.width / 2.0


class WindowPreset(Enum):
    """Standard head-CT windows (level, width) in HU."""

    BRAIN = Window(40.0, 80.0)
    SUBDURAL = Window(80.0, 200.0)
    STROKE = Window(40.0, 40.0)
    BONE = Window(600.0, 2800.0)

    @classmethod
    def by_name(cls, name: str) -> Window:
        try:
            return cls[name.upper()].value
        except KeyError as exc:
            raise ValueError(f"unknown window preset {name!r}; known: {[p.name.lower() for p in cls]}") from exc


def window_to_uint8(hu: np.ndarray, window: Window) -> np.ndarray:
    """Map HU to 8-bit display values with a linear window.

    Args:
        hu: array of any shape, Hounsfield units.
        window: the window to apply.

    Returns:
        uint8 array of the same shape: 0 at or below ``window.lower``, 255 at or above ``window.upper``,
        rounded to the nearest level in between.
    """
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(window.lower)) * np.float32(255.0 / window.width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def uint8_to_unit(image: np.ndarray) -> np.ndarray:
    """8-bit display values to float32 in [0, 1], the model's input scale."""
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def window_stack(hu: np.ndarray, windows: tuple[Window, ...]) -> np.ndarray:
    """Apply several windows to HU slices.

    Args:
        hu: (Z, Y, X) or (Y, X) float HU.
        windows: windows, one output channel each.

    Returns:
        float32 in [0, 1], shape (Z, C, Y, X) for a volume or (C, Y, X) for one slice.
    """
    channels = [uint8_to_unit(window_to_uint8(hu, w)) for w in windows]
    axis = 1 if np.ndim(hu) == 3 else 0
    return np.stack(channels, axis=axis)
