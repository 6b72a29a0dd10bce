"""The validation report recomputes the training run's split and scores only validation patients, plain and
under the stress-test perturbations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_app.pipeline.network import ModelConfig, build_model, save_artifact
from training import validation_report
from training.data import read_labelled_folder, split_by_group


def write_folder(root: Path, patients: int = 10, slices: int = 3) -> None:
    root.mkdir(parents=True)
    yy, xx = np.mgrid[:64, :64]
    rows = []
    for p in range(patients):
        for s in range(slices):
            img = np.where(np.hypot(yy - 32, xx - 32) < 26, 90, 0).astype(np.uint8)
            bleed = (p + s) % 2 == 0
            mask = np.hypot(yy - 24, xx - 36) < 5
            if bleed:
                img[mask] = 200
            name = f"p{p}_s{s}.png"
            Image.fromarray(img).save(root / name)
            Image.fromarray((mask & bleed).astype(np.uint8) * 255).save(root / f"m_{name}")
            subdural = str(int(bleed)) if s < 2 else ""  # an RSNA-style subtype column, unknown on some slices
            row = {"path": name, "hemorrhage": int(bleed), "patient_id": f"P{p}", "subdural": subdural}
            rows.append({**row, "mask_path": f"m_{name}"})
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_report_scores_the_runs_validation_patients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    data = tmp_path / "mini-ct"
    write_folder(data)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(
        {"args": {"data": [f"png:{data}", "phantom:4"], "val_fraction": 0.3, "split_seed": 0}}, run / "checkpoint.pt"
    )
    torch.manual_seed(0)
    config = ModelConfig(input_size=32, threshold=0.5)
    save_artifact(build_model(config).eval(), config, tmp_path / "model")

    argv = ["--run", str(run), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")]
    assert validation_report.main([*argv, "--dicom", "", "--stress", "thumbnail"]) == 0

    printed = capsys.readouterr().out
    _, expected_val = split_by_group(read_labelled_folder(data), 0.3, 0)
    with open(tmp_path / "out" / "mini-ct" / "labels.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    assert sorted(Path(r["path"]).name for r in written) == sorted(s.key for s in expected_val)
    assert {r["patient_id"] for r in written} == {s.group for s in expected_val}
    with open(data / "labels.csv", newline="") as fh:
        original = {r["path"]: r["subdural"] for r in csv.DictReader(fh)}
    assert {Path(r["path"]).name: r["subdural"] for r in written} == {s.key: original[s.key] for s in expected_val}
    assert "| subdural | mini-ct |" in printed
    assert f"| mini-ct | {len(expected_val)} (" in printed
    report = json.loads((tmp_path / "out" / "mini-ct" / "report.json").read_text())
    row = next(line for line in printed.splitlines() if line.startswith("| mini-ct |"))
    ece = f"{report['ece']:.3f} (calibrated: < {report['ece_calibrated_p95']:.3f})"
    assert row.split(" | ")[5] == ece  # the calibration error column
    assert "| thumbnail | mini-ct |" in printed
    assert (tmp_path / "out" / "mini-ct" / "report-thumbnail.json").is_file()
