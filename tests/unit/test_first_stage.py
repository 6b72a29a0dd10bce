"""training.first_stage: the NT-Xent loss, and the whole study on a tiny PNG folder (real ResNet50, 32 px, 1 thread)."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from synthetic_slices import head_slice

from training import first_stage
from training.data import read_labelled_folder, split_by_group
from training.first_stage import nt_xent

SIZE, PATIENTS = 48, 12


pytestmark = pytest.mark.usefixtures("one_thread")


def test_nt_xent_known_value() -> None:
    # two pairs of identical orthogonal unit vectors: each view's partner scores 1/T = 5, the two others 0
    z = torch.eye(2)
    assert float(nt_xent(z, z.clone(), temperature=0.2)) == pytest.approx(math.log(1 + 2 * math.exp(-5)), rel=1e-6)


def test_nt_xent_lower_for_matched_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(16, 8, generator=g)
    z2 = z1 + 0.1 * torch.randn(16, 8, generator=g)
    shuffled = z2[torch.roll(torch.arange(16), 1)]  # every view paired with another slice's view
    assert float(nt_xent(z1, z2)) < float(nt_xent(z1, shuffled)) - 1.0


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """24 slices: 12 patients with one bleed and one normal slice each; returns (folder, a split seed with a
    non-empty validation side, found with training's own split)."""
    root = tmp_path_factory.mktemp("first-stage") / "slices"
    root.mkdir()
    rows = []
    for i in range(2 * PATIENTS):
        name = f"s{i:02d}.png"
        Image.fromarray(head_slice(SIZE, i % 2 == 1, seed=i)).save(root / name)
        rows.append({"path": name, "patient_id": f"P{i // 2:02d}", "hemorrhage": i % 2})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    samples = read_labelled_folder(root)
    split_seed = next(s for s in range(100) if 0 < len(split_by_group(samples, 0.15, s)[1]) <= 6)
    return root, split_seed


def test_study_end_to_end_and_resume(tiny_folder: tuple[Path, int], tmp_path: Path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    root, split_seed = tiny_folder
    out = tmp_path / "study"
    argv = [f"--data=png:{root}", f"--out={out}", "--input-size=32", "--stage1-steps=2", "--stage2-steps=2"]
    argv += ["--batch-size=4", "--phantoms=2", f"--split-seed={split_seed}", "--threads=1"]

    state = first_stage.main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["variants"]) == ["none", "phantom", "ssl"] == list(state["variants"])
    for name, r in saved["variants"].items():
        assert 0.0 <= r["val_auc"] <= 1.0, name
        assert r["val_auc_slices"] == r["val_auc"]  # the only source
        assert r["images_stage2"] == 2 * 4
    assert saved["variants"]["ssl"]["images_stage1"] == 2 * 2 * 4  # two views per slice
    assert saved["variants"]["phantom"]["images_stage1"] == 2 * 4
    report = (out / "results.md").read_text()
    assert report.count("\n| ") == 3 and "torch " in report and "--stage1-steps 2" in report

    ran: list[str] = []
    real_run = first_stage.run_variant
    monkeypatch.setattr(first_stage, "run_variant", lambda variant, *a: ran.append(variant) or real_run(variant, *a))
    with caplog.at_level(logging.INFO, logger="training.first_stage"):
        first_stage.main(argv)
    assert ran == []
    assert caplog.text.count("skipping finished variant") == 3

    del saved["variants"]["ssl"]  # as if interrupted during the last variant
    (out / "results.json").write_text(json.dumps(saved))
    first_stage.main(argv)
    assert ran == ["ssl"]
    resumed = json.loads((out / "results.json").read_text())["variants"]
    assert list(resumed) == ["none", "phantom", "ssl"]
    assert resumed["none"] == saved["variants"]["none"]

    with pytest.raises(SystemExit, match="other settings"):
        first_stage.main([*argv, "--stage2-steps=3"])
