"""Training data: readers for each source format, and a Dataset that feeds the shared preprocessing.

Every reader returns a list of :class:`Sample`: a loader for one 8-bit brain-window slice, its label
vector over ``monai_app.pipeline.network.CLASSES`` (NaN = unknown, masked out of the loss), and a group
(patient) for splitting. Sources:

- ``read_labelled_folder``: PNG/JPG/DICOM files listed in ``labels.csv`` (``path`` plus ``hemorrhage``
  or ``any``; optional subtype columns, ``patient_id``/``patient``, ``mask_path``); the format of
  ``../shared/data`` and of ``python -m training.evaluate``.
- ``read_rsna``: the RSNA 2019 challenge layout, a folder of DICOM slices plus ``stage_2_train.csv``.
- ``read_nifti``: NIfTI volumes with a per-slice labels CSV or a lesion-mask volume.
- ``read_phantoms``: synthetic head CT from ``training.phantoms``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from monai_app.picture_io import read_picture
from monai_app.pipeline.network import CLASSES
from monai_app.pipeline.preprocess import fit_to_input
from monai_app.pipeline.windowing import WindowPreset, window_to_uint8
from training.augment import Augmenter

logger = logging.getLogger(__name__)

SUBTYPES = CLASSES[1:]


@dataclass
class Sample:
    """One labelled slice. ``load()`` returns the 8-bit brain-window picture (Y, X)."""

    load: Callable[[], np.ndarray]
    labels: np.ndarray  # float32 (len(CLASSES),), NaN where unknown
    group: str
    source: str
    key: str
    load_mask: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @property
    def hemorrhage(self) -> int:
        return int(self.labels[0] > 0.5)


def _label_vector(any_label: float, subtypes: dict[str, float] | None = None) -> np.ndarray:
    vec = np.full(len(CLASSES), np.nan, dtype=np.float32)
    vec[0] = any_label
    if subtypes is not None:
        for i, name in enumerate(SUBTYPES, start=1):
            if name in subtypes:
                vec[i] = subtypes[name]
    elif any_label == 0:
        vec[1:] = 0.0  # no hemorrhage at all means no subtype either
    return vec


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0


def _cell(value: str | None) -> float:
    """A label cell: empty means unknown (NaN, masked out of the loss)."""
    return float(value) if value and value.strip() else float("nan")


def read_labelled_folder(root: str | Path, source: str | None = None) -> list[Sample]:
    """Read ``root/labels.csv``: ``path`` and ``hemorrhage`` (or ``any``/``label``), optional subtypes,
    ``patient_id``/``patient``, ``mask_path``. Without a patient column each slice is its own group."""
    root = Path(root)
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found")
    source = source or root.name
    samples = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        label_col = next((c for c in ("hemorrhage", "any", "label") if c in cols), None)
        if "path" not in cols or label_col is None:
            raise ValueError(f"{csv_path}: needs a 'path' column and one of 'hemorrhage', 'any', 'label'")
        group_col = next((c for c in ("patient_id", "patient", "study") if c in cols), None)
        sub_cols = [s for s in SUBTYPES if s in cols]
        for row in reader:
            path = root / row["path"]
            if not (row.get(label_col) or "").strip():
                logger.warning("%s: no label for %s, skipped", csv_path, row["path"])
                continue
            subtypes = {s: _cell(row[s]) for s in sub_cols} if sub_cols else None
            mask = root / row["mask_path"] if row.get("mask_path") else None
            samples.append(
                Sample(
                    load=lambda p=path: read_picture(p),
                    labels=_label_vector(float(row[label_col]), subtypes),
                    group=f"{source}:{(row.get(group_col) if group_col else None) or row['path']}",
                    source=source,
                    key=row["path"],
                    load_mask=(lambda m=mask: _read_mask(m)) if mask else None,
                )
            )
    return samples


def read_rsna(dicom_dir: str | Path, labels_csv: str | Path) -> list[Sample]:
    """RSNA 2019 layout: ``ID_<sop>.dcm`` files and rows ``ID_<sop>_<subtype>,Label``.

    Groups by the DICOM Patient ID when the header has one (read lazily would defeat splitting, so
    headers are read here, without pixel data)."""
    import pydicom

    dicom_dir = Path(dicom_dir)
    table: dict[str, dict[str, float]] = defaultdict(dict)
    with open(labels_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            image_id, _, subtype = row["ID"].rpartition("_")
            table[image_id][subtype] = float(row["Label"])
    samples = []
    for image_id, labels in sorted(table.items()):
        path = dicom_dir / f"{image_id}.dcm"
        if not path.is_file():
            continue
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        group = str(getattr(header, "PatientID", "") or image_id)
        samples.append(
            Sample(
                load=lambda p=path: read_picture(p),
                labels=_label_vector(labels.get("any", 0.0), {k: v for k, v in labels.items() if k != "any"}),
                group=f"rsna:{group}",
                source="rsna",
                key=image_id,
            )
        )
    if not samples:
        raise ValueError(f"no RSNA slices of {labels_csv} found in {dicom_dir}")
    return samples


def read_nifti(volume_path: str | Path, labels: Sequence[int] | None = None, mask_path: str | Path | None = None) -> list[Sample]:
    """Axial slices of a NIfTI CT volume in HU, labelled per slice from ``labels`` or a lesion mask."""
    import SimpleITK as sitk

    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(volume_path))).astype(np.float32)  # (Z, Y, X)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0 if mask_path else None
    if labels is None and mask is None:
        raise ValueError("read_nifti needs per-slice labels or a mask")
    per_slice = list(labels) if labels is not None else [int(m.any()) for m in mask]  # type: ignore[union-attr]
    if len(per_slice) != volume.shape[0]:
        raise ValueError(f"{len(per_slice)} labels for {volume.shape[0]} slices in {volume_path}")
    brain = WindowPreset.BRAIN.value
    name = Path(volume_path).name
    return [
        Sample(
            load=lambda z=z: window_to_uint8(volume[z], brain),
            labels=_label_vector(float(per_slice[z])),
            group=f"nifti:{name}",
            source="nifti",
            key=f"{name}#{z}",
            load_mask=(lambda z=z: mask[z]) if mask is not None else None,  # type: ignore[index]
        )
        for z in range(volume.shape[0])
    ]


def read_phantoms(n_studies: int, seed: int = 0, slices: int = 12) -> list[Sample]:
    """Slices of synthetic head CT studies (half with a bleed) with exact per-slice labels and masks."""
    from training.phantoms import PhantomSpec, make_phantom

    rng = np.random.default_rng(seed)
    samples = []
    brain = WindowPreset.BRAIN.value
    for i in range(n_studies):
        spec = PhantomSpec(n_slices=slices, size=128, bleed=None if i % 2 == 0 else str(rng.choice(SUBTYPES)), seed=seed * 10007 + i)
        phantom = make_phantom(spec)
        for z in range(slices):
            has = bool(phantom.mask[z].any())
            samples.append(
                Sample(
                    load=lambda v=phantom.hu[z]: window_to_uint8(v, brain),
                    labels=_label_vector(float(has), {s: float(has and s == spec.bleed) for s in SUBTYPES}),
                    group=f"phantom:{i}",
                    source="phantom",
                    key=f"phantom{i}#{z}",
                    load_mask=lambda m=phantom.mask[z]: m,
                )
            )
    return samples


def split_by_group(samples: Sequence[Sample], val_fraction: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Deterministic split by group (patient): a group's slices are all on one side.

    The side is chosen by a hash of (seed, group), so adding data never moves existing groups."""

    def side(group: str) -> float:
        h = hashlib.sha256(f"{seed}:{group}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    train = [s for s in samples if side(s.group) >= val_fraction]
    val = [s for s in samples if side(s.group) < val_fraction]
    return train, val


class SliceDataset(torch.utils.data.Dataset):
    """Samples to (input (C, S, S) float32, labels (K,) float32 with NaN unknown).

    Pictures are decoded once and cached in memory as uint8 (6,600 slices of 256x256 are ~430 MB)."""

    def __init__(self, samples: Sequence[Sample], input_size: int, n_channels: int = 1, augment: Augmenter | None = None, cache: bool = True) -> None:
        self.samples = list(samples)
        self.input_size = input_size
        self.n_channels = n_channels
        self.augment = augment
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def picture(self, index: int) -> np.ndarray:
        if self._cache is None:
            return self.samples[index].load()
        if index not in self._cache:
            self._cache[index] = self.samples[index].load()
        return self._cache[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        gray = self.picture(index)
        if self.augment is not None:
            gray = self.augment.picture(gray)
        x, _ = fit_to_input(np.repeat(gray[None], self.n_channels, axis=0), self.input_size)
        if self.augment is not None:
            x = self.augment.tensor(x)
        return x, torch.from_numpy(self.samples[index].labels)


def class_balance(samples: Sequence[Sample]) -> tuple[int, int]:
    """(positives, negatives) for the 'any' label."""
    pos = sum(s.hemorrhage for s in samples)
    return pos, len(samples) - pos


def describe(samples: Sequence[Sample]) -> str:
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_source[s.source].append(s)
    parts = []
    for name, items in sorted(by_source.items()):
        pos, neg = class_balance(items)
        parts.append(f"{name}: {len(items)} slices ({pos} pos / {neg} neg, {len({s.group for s in items})} groups)")
    return "; ".join(parts) if parts else "no samples"
