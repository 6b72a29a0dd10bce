"""training.evaluate end to end on synthetic slices with a tiny model artifact, and training.metrics by hand."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from monai_app.pipeline.gradcam import Explainer
from monai_app.pipeline.network import ModelConfig, build_model, load_artifact, save_artifact
from monai_app.pipeline.preprocess import fit_to_input
from monai_app.pipeline.slice_classifier import SliceClassifier
from training import evaluate, metrics
from training.data import read_picture
from training.perturb import perturb

REPO = Path(__file__).resolve().parents[2]
SIZE = 64
HEAD_CENTER = (48, 40)  # (y, x): the head sits left of the picture centre, so a naive resize of the map misses


pytestmark = pytest.mark.usefixtures("one_thread")


def head_picture(lesion: tuple[int, int] | None, shape: tuple[int, int] = (96, 128), seed: int = 0) -> np.ndarray:
    """A brain-window-like slice: skull ring (255), brain (~90), optional bleed disc (200) at ``lesion``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - HEAD_CENTER[0], xx - HEAD_CENTER[1])
    img = np.zeros(shape, dtype=np.float32)
    img[r < 33] = 255
    img[r < 30] = 90
    if lesion is not None:
        img[np.hypot(yy - lesion[0], xx - lesion[1]) < 7] = 200
    img[r < 33] += rng.normal(0, 4, size=int((r < 33).sum()))
    return np.clip(img, 0, 255).astype(np.uint8)


def disc_mask(center: tuple[int, int], shape: tuple[int, int] = (96, 128), radius: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - center[0], xx - center[1]) < radius


def write_dataset(root: Path, with_masks: bool = False, label_column: str = "hemorrhage") -> list[dict[str, str]]:
    """Eight readable slices in several formats (gray, RGB, RGBA, JPG, burned-in text) and three unreadable files."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    lesions = [None, HEAD_CENTER, None, (40, 30), None, HEAD_CENTER, None, (56, 50)]
    mimics = {4: (44, 36), 6: (52, 44)}  # negatives with a bleed-bright spot (calcification), so scores overlap
    for i, lesion in enumerate(lesions):
        gray = head_picture(lesion or mimics.get(i), seed=i)
        name = f"s{i}.png"
        if i == 1:
            Image.fromarray(gray).convert("RGB").save(root / name)
        elif i == 2:
            rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
            Image.fromarray(rgba, "RGBA").save(root / name)
        elif i == 3:
            name = f"s{i}.jpg"
            Image.fromarray(gray).save(root / name, quality=95)
        elif i == 4:
            img = Image.fromarray(gray)
            ImageDraw.Draw(img).text((100, 80), "W:80 L:40", fill=255)
            img.save(root / name)
        else:
            Image.fromarray(gray).save(root / name)
        row = {"path": name, label_column: str(int(lesion is not None)), "patient_id": f"p{i // 2}"}
        if with_masks:
            row["mask_path"] = ""
            if lesion is not None:
                Image.fromarray(disc_mask(lesion).astype(np.uint8) * 255).save(root / f"m{i}.png")
                row["mask_path"] = f"m{i}.png"
        rows.append(row)
    (root / "garbage.png").write_bytes(b"this is not a picture")
    good = (root / "s0.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    for name in ("garbage.png", "truncated.png", "missing.png"):
        rows.append({"path": name, label_column: "0", "patient_id": "p9", **({"mask_path": ""} if with_masks else {})})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def pipeline_scores(model_dir: Path, root: Path, names: list[str]) -> np.ndarray:
    """Scores recomputed here with the serving stages, independently of training.evaluate."""
    model, config = load_artifact(model_dir)
    inputs = []
    for name in names:
        gray = read_picture(root / name)
        x, _ = fit_to_input(np.repeat(gray[None], config.in_channels, axis=0), config.input_size, config.crop_to_head)
        inputs.append(x)
    return SliceClassifier(model, config, precision="fp32")(torch.stack(inputs))[:, 0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval") / "slices"
    write_dataset(root, with_masks=True)
    return root


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    """A small random ResNet50 (fc scaled so sigmoid does not saturate), threshold at the median score."""
    torch.manual_seed(0)
    config = ModelConfig(input_size=SIZE, version="0.0.1-test")
    model = build_model(config).eval()
    with torch.no_grad():
        model.fc.weight.mul_(0.2)
        model.fc.bias.zero_()
    folder = tmp_path_factory.mktemp("model") / "ich-test"
    save_artifact(model, config, folder)
    scores = pipeline_scores(folder, dataset, [f"s{i}.{'jpg' if i == 3 else 'png'}" for i in range(8)])
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    assert len(np.unique(scores)) == 8 and 0 < metrics.roc_auc(labels, scores) < 1, (
        "the checks below need overlapping scores"
    )
    threshold = float(np.sort(scores)[3:5].mean())  # four slices on each side
    save_artifact(model, replace(config, threshold=threshold), folder)
    return folder


def read_scores(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return (
        [r["path"] for r in rows],
        np.array([int(r["label"]) for r in rows]),
        np.array([float(r["score"]) for r in rows]),
        [r["pointing_hit"] for r in rows],
    )


def read_distances(path: Path) -> dict[str, float]:
    with open(path, newline="") as fh:
        return {r["path"]: float(r["pointing_distance_px"]) for r in csv.DictReader(fh) if r["pointing_distance_px"]}


# ---------------------------------------------------------------- evaluate
def test_report_matches_scores_threshold_and_skips_unreadable(
    dataset: Path, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, scores_csv, plots = tmp_path / "report.json", tmp_path / "scores.csv", tmp_path / "plots"
    argv = ["--data", str(dataset), "--model", str(artifact), "--out", str(out), "--scores", str(scores_csv)]
    rc = evaluate.main([*argv, "--plots", str(plots), "--precision", "fp32", "--bootstrap", "200"])
    assert rc == 0
    report = json.loads(out.read_text())
    _, config = load_artifact(artifact)

    for key in ("n", "auc", "accuracy", "sensitivity", "specificity", "threshold"):
        assert isinstance(report[key], int | float) and not isinstance(report[key], bool), key
    for key in ("auc_ci95", "accuracy_ci95", "sensitivity_ci95", "specificity_ci95"):
        lo, hi = report[key]
        assert 0.0 <= lo <= hi <= 1.0, key
    assert report["n"] == 8 and report["n_positive"] == 4
    assert report["skipped"] == 3
    assert sorted(f["path"] for f in report["skipped_files"]) == ["garbage.png", "missing.png", "truncated.png"]
    assert report["model"] == {
        "name": config.name,
        "version": "0.0.1-test",
        "sha256": hashlib.sha256((artifact / "model.pt").read_bytes()).hexdigest(),
    }
    assert report["confidence_intervals"]["unit"] == "patient"  # patient_id repeats: resample patients

    names, labels, scores, _ = read_scores(scores_csv)
    assert report["auc"] == pytest.approx(metrics.roc_auc(labels, scores), abs=1e-12)
    assert report["threshold"] == pytest.approx(config.threshold) and report["threshold"] != 0.5
    op = metrics.at_threshold(labels, scores, config.threshold)
    for key in ("accuracy", "sensitivity", "specificity", "tp", "fp", "tn", "fn"):
        assert report[key] == pytest.approx(op[key]), key
    assert report["ece"] == pytest.approx(metrics.expected_calibration_error(labels, scores), abs=1e-12)
    assert report["brier"] == pytest.approx(np.mean((scores - labels) ** 2), abs=1e-12)
    lo, hi = report["brier_ci95"]
    assert 0.0 <= lo <= hi <= 1.0
    assert report["ece_calibrated_p95"] == pytest.approx(metrics.calibrated_ece_p95(scores), abs=1e-12)
    assert op["tp"] + op["fp"] == 4  # the threshold splits the eight scores in half
    # the same numbers as the serving stages give, picture by picture
    np.testing.assert_allclose(scores, pipeline_scores(artifact, dataset, names), atol=1e-5)

    assert 0.0 <= report["pointing_game"] <= 1.0 and report["pointing_game_n"] == 4
    for name in ("roc.png", "precision_recall.png", "calibration.png", "score_histogram.png"):
        with Image.open(plots / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    summary = capsys.readouterr().out
    assert "AUC" in summary and "skipped 3" in summary


def test_any_column_without_masks_has_no_pointing_game(tmp_path: Path, artifact: Path) -> None:
    write_dataset(tmp_path / "d", label_column="any")
    rc = evaluate.main(
        [
            "--data",
            str(tmp_path / "d"),
            "--model",
            str(artifact),
            "--out",
            str(tmp_path / "r.json"),
            "--bootstrap",
            "20",
        ]
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and report["n"] == 8 and report["n_positive"] == 4
    assert "pointing_game" not in report
    assert "subtypes" not in report  # no subtype columns, no subtype report


def test_subtype_columns_give_per_subtype_auc_and_any_sensitivity(
    dataset: Path, artifact: Path, tmp_path: Path
) -> None:
    # The eight readable slices get RSNA subtype columns: subdural known on every slice (both classes), epidural
    # unknown (empty) on two slices, subarachnoid never positive (no AUC), intraventricular column absent.
    with open(dataset / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["path"].startswith("s")]
    subdural = {"s1.png": "1", "s5.png": "1"}
    epidural = {"s3.jpg": "1", "s7.png": "1", "s0.png": "", "s2.png": ""}
    folder = tmp_path / "sub"
    folder.mkdir()
    with open(folder / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "any", "patient_id", "epidural", "subarachnoid", "subdural"])
        for r in rows:
            path = str(dataset / r["path"])
            writer.writerow(
                [
                    path,
                    r["hemorrhage"],
                    r["patient_id"],
                    epidural.get(r["path"], "0"),
                    "0",
                    subdural.get(r["path"], "0"),
                ]
            )
    out, scores_csv = tmp_path / "r.json", tmp_path / "s.csv"
    argv = ["--data", str(folder), "--model", str(artifact), "--out", str(out), "--scores", str(scores_csv)]
    assert evaluate.main([*argv, "--precision", "fp32", "--bootstrap", "50"]) == 0
    report = json.loads(out.read_text())
    _, config = load_artifact(artifact)

    assert set(report["subtypes"]) == {"epidural", "subdural"}
    with open(scores_csv, newline="") as fh:
        scored = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    for name, positives, known in (
        ("subdural", subdural, list(scored)),
        ("epidural", epidural, ["s1.png", "s3.jpg", "s4.png", "s5.png", "s6.png", "s7.png"]),
    ):
        labels = np.array([int(positives.get(k) == "1") for k in known])
        scores = np.array([float(scored[k][f"score_{name}"]) for k in known])
        sub = report["subtypes"][name]
        assert sub["n"] == len(known) and sub["n_positive"] == 2
        assert sub["auc"] == pytest.approx(metrics.roc_auc(labels, scores), abs=1e-12)
        flagged = [float(scored[k]["score"]) >= config.threshold for k in known if positives.get(k) == "1"]
        assert sub["any_sensitivity"] == pytest.approx(np.mean(flagged))
    # the subtype scores are the model's own subtype outputs, not the 'any' score
    assert any(scored[k]["score_subdural"] != scored[k]["score"] for k in scored)


class CentrePeakExplainer:
    """A stand-in Grad-CAM whose maximum is the centre of the model input."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig) -> None:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        self.map = np.exp(-((yy - (SIZE - 1) / 2) ** 2 + (xx - (SIZE - 1) / 2) ** 2) / 50.0).astype(np.float32)

    def __call__(self, inputs: torch.Tensor) -> np.ndarray:
        return np.repeat(self.map[None], len(inputs), axis=0)


def test_pointing_game_maps_back_through_the_head_crop(
    dataset: Path, artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The input centre is the head centre (the crop is centred on the head, which is left of the picture centre):
    # slices whose mask is at the head centre are hits, the two with an off-centre lesion are misses.
    monkeypatch.setattr(evaluate, "Explainer", CentrePeakExplainer)
    rc = evaluate.main(
        [
            "--data",
            str(dataset),
            "--model",
            str(artifact),
            "--out",
            str(tmp_path / "r.json"),
            "--scores",
            str(tmp_path / "s.csv"),
            "--bootstrap",
            "20",
            "--pointing-tolerance",
            "10",
        ]
    )
    report = json.loads((tmp_path / "r.json").read_text())
    names, _, _, hits = read_scores(tmp_path / "s.csv")
    assert rc == 0
    assert report["pointing_game_n"] == 4 and report["pointing_game"] == pytest.approx(0.5)
    assert {n for n, h in zip(names, hits, strict=True) if h == "1"} == {"s1.png", "s5.png"}
    lo, hi = report["pointing_game_ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    # the off-centre lesions' discs (radius 8) sit 12.8 px from the head centre: about 5 px from the peak
    distances = read_distances(tmp_path / "s.csv")
    assert distances["s1.png"] == 0.0 and distances["s5.png"] == 0.0
    assert 3.0 < distances["s3.jpg"] < 8.0 and 3.0 < distances["s7.png"] < 8.0
    assert report["pointing_tolerance_px"] == 10.0 and report["pointing_game_tolerant"] == pytest.approx(1.0)
    assert report["pointing_distance_median_px"] == pytest.approx(np.median(list(distances.values())))


def test_pointing_hit() -> None:
    cam = np.zeros((10, 12), dtype=np.float32)
    cam[2, 3] = 1.0
    mask = np.zeros((10, 12), dtype=bool)
    assert not evaluate.pointing_hit(cam, mask)
    mask[2, 3] = True
    assert evaluate.pointing_hit(cam, mask)
    assert not evaluate.pointing_hit(
        np.zeros((10, 12), np.float32), np.ones((10, 12), bool)
    )  # a flat map points nowhere
    with pytest.raises(ValueError):
        evaluate.pointing_hit(cam, mask[:5])


def test_pointing_distance_and_tolerance() -> None:
    # an outline mask (a ring, like PHE-SICH's edema around a hematoma) and a map peaking at its centre
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    ring = (r >= 10) & (r < 12)
    cam = np.exp(-(r**2) / 20.0).astype(np.float32)
    assert evaluate.pointing_distance(cam, ring) == pytest.approx(10.0)
    assert not evaluate.pointing_hit(cam, ring)
    assert not evaluate.pointing_hit(cam, ring, tolerance=9.5) and evaluate.pointing_hit(cam, ring, tolerance=10.0)
    assert evaluate.pointing_distance(cam, r < 12) == 0.0
    assert evaluate.pointing_distance(cam, np.zeros_like(ring)) == np.inf  # nothing to point at
    assert evaluate.pointing_distance(np.ones_like(cam), ring) == np.inf  # a flat map points nowhere


def raw_gradcam(model: torch.nn.Module, x: torch.Tensor, layer_name: str = "layer4") -> np.ndarray:
    """Grad-CAM by hand on the 'any' logit: ReLU(sum_k mean(dy/dA_k) A_k) at the layer's resolution."""
    layer = dict(model.named_modules())[layer_name]
    store: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("act", out)),
        layer.register_full_backward_hook(lambda _m, _gi, gout: store.__setitem__("grad", gout[0])),
    ]
    try:
        model(x.clone().requires_grad_(True))[0, 0].backward()
    finally:
        for h in hooks:
            h.remove()
    return torch.relu((store["grad"].mean(dim=(2, 3), keepdim=True) * store["act"]).sum(1))[0].detach().numpy()


def test_gradcam_map_is_high_where_raw_gradcam_is_high() -> None:
    """Explainer's map against Grad-CAM computed by hand (ReLU(sum_k mean(dy/dA_k) A_k)) on the configured layer."""
    config = ModelConfig(input_size=96)
    x = torch.rand(1, 1, 96, 96, generator=torch.Generator().manual_seed(0)) * 0.2
    x[..., 16:48, 48:88] = 1.0
    for seed in range(1, 10):
        torch.manual_seed(seed)
        model = build_model(config).eval()
        raw = raw_gradcam(model, x, config.gradcam_layer)
        if (raw > 0).sum() >= 4:
            break
    else:
        pytest.skip("no seed gave a non-trivial Grad-CAM")
    cam = Explainer(model, config)(x)[0]
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(cam)[None, None], raw.shape)[0, 0].numpy()
    assert np.corrcoef(raw.ravel(), pooled.ravel())[0, 1] > 0.8


def test_missing_model_is_one_line_exit_2(tmp_path: Path, dataset: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.evaluate",
            "--data",
            str(dataset),
            "--model",
            str(tmp_path / "nowhere"),
            "--log-level",
            "ERROR",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "model not found" in errors[0] and str(tmp_path / "nowhere") in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bundled_model_missing_and_bad_labels_exit_2(
    tmp_path: Path, dataset: Path, artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(evaluate, "default_model_dir", lambda: tmp_path / "bundled" / "ich-resnet50")
    assert evaluate.main(["--data", str(dataset)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model not found" in err and "bundled" in err
    (tmp_path / "nolabels").mkdir()
    assert evaluate.main(["--data", str(tmp_path / "nolabels"), "--model", str(artifact)]) == 2
    assert "labels.csv" in capsys.readouterr().err
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable" / "labels.csv").write_text("path,hemorrhage\nnope.png,1\nalso-nope.dcm,0\n")
    assert evaluate.main(["--data", str(tmp_path / "unreadable"), "--model", str(artifact)]) == 2
    assert "none of the 2 slices" in capsys.readouterr().err


def test_summary_is_strict_json_when_metrics_are_undefined() -> None:
    # one class only: AUC and sensitivity are undefined; the pointing game was asked for but nobody had a mask
    scored = evaluate.Scored(outcomes=[evaluate.SliceOutcome(f"s{i}", f"p{i}", 0, 0.1 * i) for i in range(5)])
    report = evaluate.summarize(scored, ModelConfig(threshold=0.25), resamples=30, pointing_game=True)
    text = json.dumps(report, allow_nan=False)  # raises on NaN
    assert report["auc"] is None and report["sensitivity"] is None and report["auc_ci95"] is None
    assert report["specificity"] == pytest.approx(3 / 5) and report["n"] == 5
    assert report["pointing_game"] is None and report["pointing_game_n"] == 0
    assert "pointing_game" not in evaluate.summarize(scored, ModelConfig(), resamples=0)
    assert "n/a" in evaluate.format_summary(json.loads(text))


def test_bootstrap_resamples_patients_together() -> None:
    groups = ["a", "a", "a", "b", "c", "c"]
    boot = evaluate.Bootstrap(groups, resamples=50, seed=1)
    assert boot.by_group and boot.unit == "patient"
    for idx in boot.draws():
        drawn = [groups[i] for i in idx]
        for g in set(drawn):  # a drawn patient comes with all of its slices, as often as it was drawn
            assert drawn.count(g) % groups.count(g) == 0
    assert evaluate.Bootstrap(["x", "y", "z"]).unit == "slice"
    y = np.array([0, 1, 0, 1, 1, 0])
    assert boot.ci95(y, y.astype(float), lambda a, _: float(a.mean())) == boot.ci95(
        y, y.astype(float), lambda a, _: float(a.mean())
    )


# ---------------------------------------------------------------- metrics
def test_roc_auc_by_hand_with_ties() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.8, 0.4, 0.4, 0.2, 0.8, 0.8])
    # pairs (positive, negative): 0.8 vs {0.4, 0.2, 0.8} = 1 + 1 + 0.5 (twice); 0.4 vs {0.4, 0.2, 0.8} = 0.5 + 1 + 0
    assert metrics.roc_auc(labels, scores) == pytest.approx((2.5 + 2.5 + 1.5) / 9)
    assert metrics.roc_auc(1 - labels, scores) == pytest.approx(1 - 6.5 / 9)
    assert np.isnan(metrics.roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_roc_auc_equals_pairwise_definition_and_roc_curve_area() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # coarse: many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert metrics.roc_auc(labels, scores) == pytest.approx(pairwise)
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) < 0)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(pairwise)


def test_at_threshold_counts() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.2])
    op = metrics.at_threshold(labels, scores, 0.5)  # positive means score >= threshold
    assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (2, 1, 1, 1)
    assert op["sensitivity"] == pytest.approx(2 / 3) and op["specificity"] == pytest.approx(1 / 2)
    assert (
        op["accuracy"] == pytest.approx(3 / 5)
        and op["ppv"] == pytest.approx(2 / 3)
        and op["npv"] == pytest.approx(1 / 2)
    )
    assert np.isnan(metrics.at_threshold(np.zeros(3), np.ones(3), 0.5)["sensitivity"])


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_threshold_for_sensitivity_is_the_highest_reaching_target(target: float) -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 80)
    scores = np.clip(rng.random(80) * 0.8 + 0.15 * labels, 0.01, 0.99)
    t = metrics.threshold_for_sensitivity(labels, scores, target)
    assert metrics.at_threshold(labels, scores, t)["sensitivity"] >= target
    higher = scores[(labels == 1) & (scores > t)]
    if len(higher):  # the next positive score up would miss the target
        assert metrics.at_threshold(labels, scores, float(higher.min()))["sensitivity"] < target
    assert metrics.threshold_for_sensitivity(np.zeros(4), np.ones(4), 0.9) == 0.5


def test_precision_recall_and_calibration_bins() -> None:
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.05])
    recall, precision = metrics.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3, 0.5, 0.4])
    mean_p, frac, count = metrics.calibration_bins(labels, scores, bins=2)
    assert count.tolist() == [2, 3]
    np.testing.assert_allclose(mean_p, [0.125, 0.8])
    np.testing.assert_allclose(frac, [0.0, 2 / 3])


def test_calibration_error_and_brier_by_hand() -> None:
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.05])
    # two bins: [0.2, 0.05] observe 0 against a mean of 0.125; [0.9, 0.8, 0.7] observe 2/3 against 0.8
    assert metrics.expected_calibration_error(labels, scores, bins=2) == pytest.approx((2 * 0.125 + 3 * (0.8 - 2 / 3)) / 5)
    assert metrics.brier_score(labels, scores) == pytest.approx((0.01 + 0.64 + 0.09 + 0.04 + 0.0025) / 5)
    # scores that are the observed rates of their bins are calibrated; shifting them all by 0.1 costs 0.1
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    rates = np.array([0.25] * 4 + [0.75] * 4)
    assert metrics.expected_calibration_error(labels, rates) == pytest.approx(0.0)
    assert metrics.expected_calibration_error(labels, rates + 0.1) == pytest.approx(0.1)
    assert np.isnan(metrics.expected_calibration_error(np.zeros(0), np.zeros(0)))
    assert np.isnan(metrics.brier_score(np.zeros(0), np.zeros(0)))


def test_calibrated_ece_p95_separates_calibrated_from_overconfident_scores() -> None:
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.0, 1.0, 400)
    bound = metrics.calibrated_ece_p95(scores)
    assert 0.0 < bound < 0.1  # 400 slices in 10 bins: a few hundredths of noise
    calibrated = (rng.random(400) < scores).astype(float)
    assert metrics.expected_calibration_error(calibrated, scores) < bound
    overconfident = np.clip((scores - 0.5) * 3 + 0.5, 0.0, 1.0)  # the same labels, scores pushed to 0 and 1
    assert metrics.expected_calibration_error(calibrated, overconfident) > metrics.calibrated_ece_p95(overconfident)
    assert metrics.calibrated_ece_p95(scores) == bound  # seeded: a report gives the same bound every time


def test_perturbed_evaluation_scores_the_changed_slices(dataset: Path, artifact: Path, tmp_path: Path) -> None:
    argv = ["--data", str(dataset), "--model", str(artifact), "--bootstrap", "0", "--precision", "fp32"]
    assert evaluate.main([*argv, "--scores", str(tmp_path / "plain.csv")]) == 0
    rc = evaluate.main(
        [*argv, "--perturb", "thumbnail", "--out", str(tmp_path / "r.json"), "--scores", str(tmp_path / "t.csv")]
    )
    report = json.loads((tmp_path / "r.json").read_text())
    names, labels, scores, hits = read_scores(tmp_path / "t.csv")
    plain_names, _, plain_scores, _ = read_scores(tmp_path / "plain.csv")
    assert rc == 0 and report["perturbation"] == "thumbnail" and report["n"] == 8
    assert "pointing_game" not in report and set(hits) == {""}  # masks no longer line up: no pointing game
    assert names == plain_names and not np.allclose(scores, plain_scores)  # same slices, changed pictures
    model, config = load_artifact(artifact)
    expected = []
    for name in names:
        gray = perturb(read_picture(dataset / name), "thumbnail", name)
        x, _ = fit_to_input(np.repeat(gray[None], config.in_channels, axis=0), config.input_size, config.crop_to_head)
        expected.append(x)
    assert np.allclose(scores, SliceClassifier(model, config, precision="fp32")(torch.stack(expected))[:, 0], atol=1e-5)


def test_gradcam_layer_option_explains_with_that_layer(
    dataset: Path, artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    used: list[str] = []
    real = evaluate.Explainer

    def recording(model: torch.nn.Module, config: ModelConfig) -> Explainer:
        used.append(config.gradcam_layer)
        return real(model, config)

    monkeypatch.setattr(evaluate, "Explainer", recording)
    out = tmp_path / "r.json"
    argv = ["--data", str(dataset), "--model", str(artifact), "--bootstrap", "20", "--precision", "fp32"]
    assert evaluate.main([*argv, "--out", str(out), "--gradcam-layer", "layer3"]) == 0
    report = json.loads(out.read_text())
    assert used == ["layer3"] and report["gradcam_layer"] == "layer3" and report["pointing_game_n"] == 4
    assert report["model"]["sha256"] == hashlib.sha256((artifact / "model.pt").read_bytes()).hexdigest()

    assert evaluate.main([*argv, "--gradcam-layer", "layer9"]) == 2
    assert "layer9" in capsys.readouterr().err
    write_dataset(tmp_path / "no-masks")  # no pointing game to play: the wrong name is still refused
    plain = ["--data", str(tmp_path / "no-masks"), "--model", str(artifact), "--bootstrap", "20"]
    assert evaluate.main([*plain, "--gradcam-layer", "layer9"]) == 2
    assert "layer9" in capsys.readouterr().err
