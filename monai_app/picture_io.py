"""Single pictures for ``ich-triage predict`` and evaluation: a PNG/JPG (any mode, any size, taken as a
brain-window image) or one DICOM CT slice (windowed from HU), as an 8-bit (Y, X) brain-window array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dicom_io.series_to_volume import read_slice_hu
from monai_app.pipeline.preprocess import to_gray_uint8
from monai_app.pipeline.windowing import WindowPreset, window_to_uint8

_NATIVE_MODES = {"L", "RGB", "RGBA", "I", "I;16", "F"}
PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


class UnreadablePictureError(ValueError):
    """The file is neither a picture nor a DICOM slice with pixel data we can decode."""


def _as_array(im: Image.Image) -> np.ndarray:
    """Pillow modes to arrays ``to_gray_uint8`` understands: bilevel to L, palette/alpha to RGBA, CMYK etc. to RGB."""
    if im.mode not in _NATIVE_MODES:
        if im.mode == "1":
            im = im.convert("L")
        elif im.mode in ("P", "PA", "LA") or "transparency" in im.info:
            im = im.convert("RGBA")
        else:
            im = im.convert("RGB")
    return np.asarray(im)


def read_picture(path: str | Path) -> np.ndarray:
    """Returns (Y, X) uint8 brain-window values. Raises UnreadablePictureError."""
    path = Path(path)
    if path.suffix.lower() in PICTURE_SUFFIXES:
        try:
            with Image.open(path) as im:
                im.seek(0)
                return to_gray_uint8(_as_array(im))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise UnreadablePictureError(f"{path}: not a readable picture ({exc})") from exc
    try:
        return window_to_uint8(read_slice_hu(path), WindowPreset.BRAIN.value)
    except Exception as exc:  # pydicom raises many types for non-DICOM or undecodable data
        raise UnreadablePictureError(f"{path}: not a readable picture or DICOM slice ({type(exc).__name__}: {exc})") from exc
