"""Re-make validation slices the way they look when they come from elsewhere: a stress test for evaluation.

The held-out sets this model will meet include slices published on the internet: JPEG screenshots of a
viewer, thumbnails, crops, other display windows, letters burned in. ``python -m training.evaluate
--perturb NAME`` scores a labelled folder after one of these deterministic changes, so the AUC drop from
each kind of change is measured on slices the model never trained on. Each change is applied to the 8-bit
brain-window picture, encoded to the file format such a picture travels in, and decoded again, so the
reader and the serving preprocessing see exactly what they would see in a file.

The changes are fixed by the slice's key (the same slice gets the same change in every run); they are not
the training augmentations (``training.augment``), although they cover the same kinds of variation.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from monai_app.pipeline.preprocess import head_box, to_gray_uint8

Perturbation = Callable[[np.ndarray, np.random.Generator], Image.Image]


def _encode(img: Image.Image, fmt: str, **options: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def jpeg_rgb(gray: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Upscaled to 512 px, RGB, JPEG at quality 35-60: a picture saved from a web page."""
    img = Image.fromarray(gray).resize((512, 512), Image.Resampling.BICUBIC).convert("RGB")
    return _encode(img, "JPEG", quality=int(rng.integers(35, 61)))


def screenshot(gray: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A viewer screenshot: the slice smaller and off-centre on a wider black canvas, with corner annotations,
    side markers and a scale bar burned in, saved as an RGBA PNG."""
    width, height = 720, 560
    side = int(rng.integers(300, 461))
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    x0, y0 = int(rng.integers(10, width - side - 10)), int(rng.integers(40, height - side - 10))
    canvas.paste(Image.fromarray(gray).resize((side, side), Image.Resampling.BILINEAR).convert("RGBA"), (x0, y0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(("Ex: 23451", "Se: 2", "Im: 14/32", "Axial")):
        draw.text((8, 6 + 12 * i), line, fill=(255, 255, 255, 255))
    for i, line in enumerate(("W: 80 L: 40", "120 kV", "5.0 mm")):
        draw.text((width - 90, height - 44 + 12 * i), line, fill=(230, 230, 120, 255))
    draw.text((x0 + 4, y0 + side // 2), "R", fill=(255, 255, 255, 255))
    draw.text((x0 + side - 12, y0 + side // 2), "L", fill=(255, 255, 255, 255))
    draw.line((x0 + side - 70, y0 + side - 12, x0 + side - 20, y0 + side - 12), fill=(255, 255, 255, 255), width=2)
    return _encode(canvas, "PNG")


def tight_crop(gray: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Zoomed in: a crop keeping 70-85% of the head box's width, so part of the skull is cut off."""
    box = head_box(gray)
    keep = float(rng.uniform(0.70, 0.85))
    h, w = box.y1 - box.y0, box.x1 - box.x0
    cy, cx = (box.y0 + box.y1) / 2 + rng.uniform(-0.05, 0.05) * h, (box.x0 + box.x1) / 2 + rng.uniform(-0.05, 0.05) * w
    y0, x0 = max(0, int(cy - keep * h / 2)), max(0, int(cx - keep * w / 2))
    crop = gray[y0 : y0 + int(keep * h), x0 : x0 + int(keep * w)]
    return Image.fromarray(crop)


def other_window(gray: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Another display window: the brain window's contrast compressed (as a width of 100-150 HU would show
    it; what the 8-bit picture clipped stays clipped) with a small level shift and gamma."""
    width = float(rng.uniform(100.0, 150.0))
    shift = float(rng.uniform(-12.0, 12.0))
    gamma = float(rng.uniform(0.85, 1.15))
    v = (gray.astype(np.float32) - 127.5) * (80.0 / width) + 127.5 + shift
    v = 255.0 * (np.clip(v, 0, 255) / 255.0) ** gamma
    v[gray == 0], v[gray == 255] = 0.0, 255.0  # air and bone lie far outside either window
    return Image.fromarray(np.rint(v).astype(np.uint8))


def thumbnail(gray: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A small thumbnail (96-160 px) saved as JPEG at quality 70."""
    side = int(rng.integers(96, 161))
    return _encode(Image.fromarray(gray).resize((side, side), Image.Resampling.LANCZOS), "JPEG", quality=70)


def figure(gray: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A published figure: the slice on a white page with a margin, a caption below, a panel letter and a
    coloured arrow on the image, saved as an RGB JPEG (a journal or teaching-site picture)."""
    side = int(rng.integers(280, 421))
    margin, caption = int(rng.integers(12, 49)), int(rng.integers(30, 71))
    page = Image.new("RGB", (side + 2 * margin, side + 2 * margin + caption), (255, 255, 255))
    page.paste(Image.fromarray(gray).resize((side, side), Image.Resampling.BICUBIC).convert("RGB"), (margin, margin))
    draw = ImageDraw.Draw(page)
    draw.text((margin + 6, margin + 6), "ABCD"[int(rng.integers(0, 4))], fill=(255, 255, 255))
    for i, line in enumerate(("Figure 2. Non-contrast axial CT of the head", "at the level of the lateral ventricles.")):
        draw.text((margin, side + margin + 8 + 14 * i), line, fill=(0, 0, 0))
    tip = (margin + int(rng.uniform(0.3, 0.7) * side), margin + int(rng.uniform(0.3, 0.7) * side))
    tail = (tip[0] + int(rng.integers(25, 50)), tip[1] - int(rng.integers(25, 50)))
    colour = ((255, 255, 0), (255, 0, 0), (255, 255, 255))[int(rng.integers(0, 3))]
    draw.line((*tail, *tip), fill=colour, width=3)
    draw.polygon([tip, (tip[0] + 12, tip[1] - 3), (tip[0] + 3, tip[1] - 12)], fill=colour)
    return _encode(page, "JPEG", quality=int(rng.integers(60, 91)))


def internet(gray: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Several at once: another window, then a screenshot or a tight crop, then JPEG."""
    img = np.asarray(other_window(gray, rng))
    img = to_gray_uint8(np.asarray(screenshot(img, rng) if rng.random() < 0.5 else tight_crop(img, rng)))
    return _encode(Image.fromarray(img).convert("RGB"), "JPEG", quality=int(rng.integers(40, 76)))


PERTURBATIONS: dict[str, Perturbation] = {
    "jpeg": jpeg_rgb,
    "screenshot": screenshot,
    "tight-crop": tight_crop,
    "other-window": other_window,
    "thumbnail": thumbnail,
    "figure": figure,
    "internet": internet,
}


def perturb(gray: np.ndarray, name: str, key: str) -> np.ndarray:
    """The 8-bit brain-window slice ``gray`` after perturbation ``name``, read back as the serving reader
    would read that file (any mode to 8-bit gray); the same ``key`` always gets the same change."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose from {sorted(PERTURBATIONS)}")
    rng = np.random.default_rng(zlib.crc32(f"{name}:{key}".encode()))
    return to_gray_uint8(np.asarray(PERTURBATIONS[name](np.asarray(gray, dtype=np.uint8), rng)))
