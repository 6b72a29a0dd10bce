"""The paired model comparison: a real improvement gets an interval above zero, a tie an interval at zero."""

from __future__ import annotations

import numpy as np
import pytest

from training.compare import paired_auc_difference
from training.metrics import roc_auc


def test_better_scores_give_a_positive_paired_difference() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    old = labels + rng.normal(0, 1.0, 200)  # AUC about 0.76
    new = labels + rng.normal(0, 0.4, 200)  # AUC about 0.96
    result = paired_auc_difference(labels, new, old, [f"s{i}" for i in range(200)], resamples=300)
    assert result["auc_new"] == pytest.approx(roc_auc(labels, new))
    assert result["auc_difference"] == pytest.approx(roc_auc(labels, new) - roc_auc(labels, old))
    lo, hi = result["auc_difference_ci95"]
    assert 0 < lo < result["auc_difference"] < hi
    assert result["share_new_better"] == 1.0 and result["unit"] == "slice"


def test_identical_models_tie_and_patients_resample_together() -> None:
    rng = np.random.default_rng(1)
    labels = np.tile([0, 1], 30)
    scores = labels + rng.normal(0, 1.0, 60)
    groups = [f"p{i // 6}" for i in range(60)]
    result = paired_auc_difference(labels, scores, scores.copy(), groups, resamples=100)
    assert result["auc_difference"] == 0.0 and result["auc_difference_ci95"] == [0.0, 0.0]
    assert result["share_new_better"] == 0.0 and result["unit"] == "patient"


def test_cli_scores_both_models_on_the_same_slices(tmp_path, capsys, one_thread) -> None:  # type: ignore[no-untyped-def]
    import csv
    import json

    import torch
    from PIL import Image

    from monai_app.pipeline.network import ModelConfig, build_model, save_artifact
    from training import evaluate

    yy, xx = np.mgrid[:48, :48]
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "hemorrhage"])
        for i in range(10):
            img = np.where(np.hypot(yy - 24, xx - 24) < 20, 90, 0).astype(np.uint8)
            if i % 2:
                img[np.hypot(yy - 18, xx - 28) < 3 + i // 2] = 200
            Image.fromarray(img).save(tmp_path / f"s{i}.png")
            w.writerow([f"s{i}.png", i % 2])
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        config = ModelConfig(input_size=32)
        save_artifact(build_model(config).eval(), config, tmp_path / name)
    from training.compare import main

    argv = ["--data", str(tmp_path), "--model", str(tmp_path / "a"), "--baseline", str(tmp_path / "b")]
    assert main([*argv, "--bootstrap", "50", "--precision", "fp32", "--out", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    for key, model in (("auc_new", "a"), ("auc_old", "b")):
        assert evaluate.main(["--data", str(tmp_path), "--model", str(tmp_path / model), "--precision", "fp32",
                              "--bootstrap", "0", "--out", str(tmp_path / f"{model}.json")]) == 0  # fmt: skip
        assert result[key] == pytest.approx(json.loads((tmp_path / f"{model}.json").read_text())["auc"])
    assert result["auc_difference"] == pytest.approx(result["auc_new"] - result["auc_old"])
    assert "difference" in capsys.readouterr().out
    assert main(["--data", str(tmp_path / "nowhere"), "--model", str(tmp_path / "a")]) == 2
