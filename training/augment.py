"""Augmentations that make the classifier robust to slices from other scanners, sites and screenshots.

Two places, because some change the picture before the shared preprocessing (field of view, burned-in
text, JPEG artefacts, resolution) and some change the model input after it (the student recipe:
rotation 20 degrees, shift 0.15, zoom 0.2, brightness; plus contrast, gamma, flips, noise).
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

_WORDS = ("L", "R", "A", "P", "HEAD", "CT", "5mm", "W:80 L:40", "120kV", "Se:3", "Im:14", "Axial", "mA 250", "IMG 0023")


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 20.0
    shift: float = 0.15
    zoom: float = 0.2
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.25
    noise: float = 0.03
    p_flip: float = 0.5
    p_text: float = 0.3
    p_jpeg: float = 0.3
    p_fov: float = 0.3
    p_rescale: float = 0.3


class Augmenter:
    """Random augmentation; one instance per dataset, seeded per worker by torch's worker seeding."""

    def __init__(self, config: AugmentConfig | None = None, seed: int | None = None) -> None:
        self.config = config or AugmentConfig()
        self.rng = random.Random(seed)

    # ---- picture-level, before preprocessing (uint8 (Y, X)) ----
    def picture(self, gray: np.ndarray) -> np.ndarray:
        c, r = self.config, self.rng
        img = Image.fromarray(gray)
        if r.random() < c.p_fov:
            img = self._field_of_view(img)
        if r.random() < c.p_text:
            img = self._burn_text(img)
        if r.random() < c.p_rescale:
            side = r.choice((96, 160, 224, 320, 512))
            img = img.resize((side, side), Image.BILINEAR)
        if r.random() < c.p_jpeg:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=r.randint(25, 90))
            buf.seek(0)
            img = Image.open(buf).convert("L")
        return np.asarray(img)

    def _field_of_view(self, img: Image.Image) -> Image.Image:
        """A larger field of view (black border) or a tighter one (crop that may clip the skull)."""
        w, h = img.size
        r = self.rng
        if r.random() < 0.5:
            pad = int(w * r.uniform(0.05, 0.5))
            canvas = Image.new("L", (w + 2 * pad, h + 2 * pad), 0)
            canvas.paste(img, (pad + r.randint(-pad // 2, pad // 2), pad + r.randint(-pad // 2, pad // 2)))
            return canvas
        f = r.uniform(0.75, 0.95)
        cw, ch = int(w * f), int(h * f)
        x0, y0 = r.randint(0, w - cw), r.randint(0, h - ch)
        return img.crop((x0, y0, x0 + cw, y0 + ch))

    def _burn_text(self, img: Image.Image) -> Image.Image:
        """Annotation text in the corners, as on screenshots of viewers."""
        img = img.copy()
        draw = ImageDraw.Draw(img)
        w, h = img.size
        r = self.rng
        for _ in range(r.randint(1, 4)):
            x = r.choice((2, max(2, w - 60))) + r.randint(0, 10)
            y = r.choice((2, max(2, h - 16))) + r.randint(-2, 2)
            draw.text((x, y), r.choice(_WORDS), fill=r.randint(180, 255))
        return img

    # ---- tensor-level, after preprocessing ((C, S, S) float in [0, 1]) ----
    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        c, r = self.config, self.rng
        angle = math.radians(r.uniform(-c.rotation_deg, c.rotation_deg))
        scale = r.uniform(1 - c.zoom, 1 + c.zoom)
        tx, ty = r.uniform(-c.shift, c.shift) * 2, r.uniform(-c.shift, c.shift) * 2  # grid units span 2
        flip = -1.0 if r.random() < c.p_flip else 1.0
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[cos * flip, -sin, tx], [sin * flip, cos, ty]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        x = (x - 0.5) * r.uniform(1 - c.contrast, 1 + c.contrast) + 0.5 + r.uniform(-c.brightness, c.brightness)
        x = x.clamp(0, 1) ** math.exp(r.uniform(-c.gamma, c.gamma))
        if c.noise > 0:
            x = x + torch.randn_like(x) * r.uniform(0, c.noise)
        return x.clamp(0, 1)
