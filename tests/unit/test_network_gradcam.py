from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_app.pipeline.gradcam import Explainer, GradCamLayerError, check_target_layer
from monai_app.pipeline.network import ModelArtifactError, ModelConfig, build_model, load_artifact, save_artifact
from monai_app.pipeline.slice_classifier import SliceClassifier


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(threshold=1.5)
    with pytest.raises(ValueError):
        ModelConfig(windows=("nope",))
    with pytest.raises(ValueError):
        ModelConfig(classes=("subdural", "any"))


def test_artifact_roundtrip_and_checksum(tmp_path):
    config = ModelConfig(input_size=64, threshold=0.3, version="9.9.9")
    model = build_model(config)
    stored = save_artifact(model, config, tmp_path / "m")
    assert len(stored.sha256) == 64
    loaded, cfg = load_artifact(tmp_path / "m")
    assert cfg.threshold == 0.3 and cfg.version == "9.9.9"
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
        got = loaded(x)
    assert torch.allclose(ref, got, atol=5e-2)  # fp16 storage
    # tampering with the weights is detected
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    data["sha256"] = "0" * 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelArtifactError, match="sha256"):
        load_artifact(tmp_path / "m")
    with pytest.raises(ModelArtifactError, match="model not found"):
        load_artifact(tmp_path / "missing")


def test_gradcam_target_layer_checked_and_maps_shape():
    config = ModelConfig(input_size=64)
    model = build_model(config).eval()
    check_target_layer(model, "layer4")
    with pytest.raises(GradCamLayerError):
        check_target_layer(model, "layer9")
    with pytest.raises(GradCamLayerError):
        Explainer(model, ModelConfig(input_size=64, gradcam_layer="features.7"))
    maps = Explainer(model, config)(torch.rand(2, 1, 64, 64))
    assert maps.shape == (2, 64, 64)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_classifier_bf16_close_to_fp32():
    config = ModelConfig(input_size=64)
    model = build_model(config).eval()
    x = torch.rand(4, 1, 64, 64)
    fp32 = SliceClassifier(model, config, precision="fp32")(x)
    bf16 = SliceClassifier(model, config, precision="bf16")(x)
    assert fp32.shape == (4, len(config.classes))
    assert np.abs(fp32 - bf16).max() < 0.05
    with pytest.raises(ValueError):
        SliceClassifier(model, config)(torch.rand(1, 3, 64, 64))


def test_tta_flip_averages_slice_and_mirror():
    config = ModelConfig(input_size=64)
    model = build_model(config).eval()
    x = torch.rand(3, 1, 64, 64)
    plain = SliceClassifier(model, config, precision="fp32")
    both = SliceClassifier(model, ModelConfig(input_size=64, tta_flip=True), precision="fp32")
    expected = 0.5 * (plain(x) + plain(torch.flip(x, dims=(-1,))))
    np.testing.assert_allclose(both(x), expected, atol=1e-5)
    assert not np.allclose(both(x), plain(x), atol=1e-4)  # the mirror pass really runs
