"""The model artifact: a MONAI ResNet50 state_dict plus the config that fixes its preprocessing and identity.

An artifact is a folder with ``model.pt`` (a state_dict, fp16 to keep it compact) and ``config.json``
(:class:`ModelConfig`, including the sha256 of ``model.pt``). One factory, :func:`build_model`, serves
training and inference, and the model stays eager so Grad-CAM's hooks work (TorchScript has none).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import resnet50

from monai_app.pipeline.windowing import Window, WindowPreset

logger = logging.getLogger(__name__)

CLASSES = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"


class ModelArtifactError(RuntimeError):
    """The model folder is missing, incomplete, or does not match its recorded checksum."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything inference needs to reproduce training's preprocessing, and the model's identity."""

    name: str = "ich-resnet50"
    version: str = "0.0.0"
    architecture: str = "monai.networks.nets.resnet50"
    windows: tuple[str, ...] = ("brain",)
    input_size: int = 128
    crop_to_head: bool = True
    classes: tuple[str, ...] = CLASSES
    threshold: float = 0.5
    # layer2 (16x16 maps at 128 px) localises: on PHE-SICH validation its maximum lay a median ~20 px from the
    # lesion against ~38 px for layer4, whose 4x4 map cannot point finer than a quarter of the head
    gradcam_layer: str = "layer2"
    tta_flip: bool = False  # test-time augmentation: average with the left-right mirrored slice
    sha256: str = ""
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {self.input_size}")
        if not self.windows:
            raise ValueError("at least one window is required")
        for name in self.windows:
            WindowPreset.by_name(name)
        if not self.classes or self.classes[0] != "any":
            raise ValueError(f"the first class must be 'any' (the triage output), got {self.classes}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        object.__setattr__(self, "windows", tuple(self.windows))
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def window_values(self) -> tuple[Window, ...]:
        return tuple(WindowPreset.by_name(n) for n in self.windows)

    @property
    def in_channels(self) -> int:
        return len(self.windows)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            logger.warning("ignoring unknown model config keys: %s", sorted(unknown))
        return cls(**{k: v for k, v in data.items() if k in known})


def build_model(config: ModelConfig) -> torch.nn.Module:
    """MONAI's 2D ResNet50 with one input channel per window and one logit per class."""
    return resnet50(
        spatial_dims=2,
        n_input_channels=config.in_channels,
        num_classes=len(config.classes),
        pretrained=False,
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the artifact is read by other users (containers, MAPs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifact(model: torch.nn.Module, config: ModelConfig, folder: Path, half: bool = True) -> ModelConfig:
    """Write ``model.pt`` (fp16 by default) and ``config.json`` with its sha256; returns the stored config."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, weights)
    stored = ModelConfig.from_dict({**asdict(config), "sha256": sha256_of(weights)})
    _atomic_write_bytes(folder / CONFIG_FILE, stored.to_json().encode())
    return stored


def default_model_dir() -> Path:
    """The bundled model shipped with the package."""
    return Path(__file__).resolve().parent.parent / "models" / "ich-resnet50"


def resolve_model_dir(path: str | Path | None) -> Path:
    """Accept the folder, its ``model.pt`` or ``config.json``, or a parent holding exactly one artifact."""
    if path is None:
        return default_model_dir()
    p = Path(path)
    if p.is_file():
        p = p.parent
    if (p / CONFIG_FILE).is_file():
        return p
    if p.is_dir():
        found = sorted(c.parent for c in p.glob(f"*/{CONFIG_FILE}"))
        if len(found) == 1:
            return found[0]
    raise ModelArtifactError(f"model not found: {path} (expected a folder with {WEIGHTS_FILE} and {CONFIG_FILE})")


def load_config(folder: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelArtifactError(f"unreadable model config in {folder}: {exc}") from exc


def load_artifact(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ModelConfig]:
    """Load, verify the sha256, build the eager model in fp32, eval mode, channels_last."""
    folder = resolve_model_dir(path)
    config = load_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelArtifactError(f"model not found: {weights}")
    actual = sha256_of(weights)
    if config.sha256 and actual != config.sha256:
        raise ModelArtifactError(f"{weights} sha256 {actual[:12]}... does not match config {config.sha256[:12]}...")
    model = build_model(config)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval().to(device).to(memory_format=torch.channels_last)
    return model, config
