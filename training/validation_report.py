"""Evaluate a model on the validation split a training run never trained on, per source, plus the real DICOM
studies, and print the model card's metrics table.

    python -m training.validation_report --run ~/ich-runs/r1 [--model DIR] --out ~/ich-runs/r1/validation

The split is recomputed exactly as training did it (``split_by_group`` with the run's seed and fraction, by
patient for PHE-SICH) from the run's recorded arguments; each source's validation slices are written as a
``labels.csv`` (absolute paths) and scored by ``python -m training.evaluate`` (bootstrap intervals by patient
where patients are known; the Grad-CAM pointing game where masks exist). The study folders under ``--dicom``
(by default the CQ500 series in ../shared/data, when present) run through the whole application.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from training import evaluate
from training.data import SUBTYPES, split_by_group
from training.perturb import PERTURBATIONS
from training.train import SYNTHETIC_SOURCES, load_sources

REPO = Path(__file__).resolve().parents[1]


def write_split_folders(run: Path, out: Path) -> dict[str, Path]:
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    args = ckpt["args"]
    samples = load_sources([d for d in args["data"] if not d.startswith("phantom")])
    _, val = split_by_group(samples, args["val_fraction"], args["split_seed"])
    folders: dict[str, Path] = {}
    for source in sorted({s.source for s in val} - SYNTHETIC_SOURCES):
        rows = [s for s in val if s.source == source]
        folder = out / source
        folder.mkdir(parents=True, exist_ok=True)
        spec = next(d for d in args["data"] if d.startswith("png:") and Path(d[4:]).name == source)
        root = (REPO / spec[4:]).resolve() if not Path(spec[4:]).is_absolute() else Path(spec[4:])
        with open(root / "labels.csv", newline="") as fh:
            reader = csv.DictReader(fh)
            subtypes = [c for c in SUBTYPES if c in (reader.fieldnames or [])]
            original = {r["path"]: r for r in reader}
        with open(folder / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            has_mask = any(original[s.key].get("mask_path") for s in rows)
            w.writerow(["path", "hemorrhage", "patient_id", *subtypes] + (["mask_path"] if has_mask else []))
            for s in rows:
                row = original[s.key]
                extra = [str(root / row["mask_path"])] if has_mask else []
                w.writerow([str(root / s.key), s.hemorrhage, s.group, *(row[c] for c in subtypes)] + extra)
        folders[source] = folder
    return folders


def _with_ci(report: dict, key: str) -> str:
    if report.get(key) is None:
        return "n/a"
    lo, hi = report.get(f"{key}_ci95") or [float("nan"), float("nan")]
    return f"{report[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _calibration(report: dict) -> str:
    """The ECE beside what a perfectly calibrated model reaches by chance on the same scores."""
    if report.get("ece") is None:
        return "n/a"
    bound = report.get("ece_calibrated_p95")
    return f"{report['ece']:.3f}" + (f" (calibrated: < {bound:.3f})" if bound is not None else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--dicom",
        default=str(REPO.parent / "shared" / "data" / "cq500-dicom"),
        help="a folder of DICOM study folders to run through the whole application ('' to skip)",
    )
    p.add_argument(
        "--stress",
        default=",".join(sorted(PERTURBATIONS)),
        help="comma-separated training.perturb names to score each source under as well ('' to skip)",
    )
    args = p.parse_args(argv)
    run, out = Path(args.run).expanduser(), Path(args.out).expanduser()
    model = ["--model", args.model] if args.model else []
    rows, stressed = [], []
    for source, folder in write_split_folders(run, out).items():
        report = folder / "report.json"
        code = evaluate.main(
            [
                "--data",
                str(folder),
                "--out",
                str(report),
                "--plots",
                str(folder / "plots"),
                *model,
                "--log-level",
                "WARNING",
            ]
        )
        if code != 0:
            return code
        rows.append((source, json.loads(report.read_text())))
        for name in [n for n in args.stress.split(",") if n]:
            report = folder / f"report-{name}.json"
            argv = ["--data", str(folder), "--out", str(report), "--perturb", name, "--bootstrap", "200", *model]
            if evaluate.main([*argv, "--log-level", "WARNING"]) != 0:
                return 2
            stressed.append((source, name, json.loads(report.read_text())))
    print(
        "\n| validation source | slices (pos) | AUC [95% CI] | sensitivity | specificity | calibration error (ECE) "
        "| pointing game | within 15 px |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for source, r in rows:
        pos = int(r.get("tp", 0) + r.get("fn", 0))
        cells = [_with_ci(r, key) for key in ("auc", "sensitivity", "specificity")]
        cells.append(_calibration(r))
        cells += [_with_ci(r, key) for key in ("pointing_game", "pointing_game_tolerant")]
        print(f"| {source} | {r['n']} ({pos}) | " + " | ".join(cells) + " |")
    print(f"\nthreshold {rows[0][1]['threshold']:.4f}; reports and plots under {out}")
    subtyped = [(source, name, sub) for source, r in rows for name, sub in r.get("subtypes", {}).items()]
    if subtyped:
        print("\n| subtype | source | slices (pos) | subtype AUC [95% CI] | flagged by the 'any' threshold |")
        print("|---|---|---|---|---|")
        for source, name, sub in subtyped:
            print(
                f"| {name} | {source} | {sub['n']} ({sub['n_positive']}) | {_with_ci(sub, 'auc')} | {sub['any_sensitivity']:.3f} |"
            )
    if stressed:
        print("\n| stress test (training.perturb) | source | AUC [95% CI] | sensitivity | specificity |")
        print("|---|---|---|---|---|")
        for source, name, r in stressed:
            cells = [_with_ci(r, key) for key in ("auc", "sensitivity", "specificity")]
            print(f"| {name} | {source} | " + " | ".join(cells) + " |")
    studies = sorted(d for d in Path(args.dicom).expanduser().glob("*") if d.is_dir()) if args.dicom else []
    if studies:
        print("\n| DICOM study (whole application) | decision | study probability | slices |")
        print("|---|---|---|---|")
        for folder, result in zip(studies, run_studies(studies, out / "dicom", args.model), strict=True):
            print(f"| {folder.name} | {result.decision.value} | {result.probability or 0:.3f} | {len(result.slices)} |")
    return 0


def run_studies(folders: list[Path], out: Path, model: str | None) -> list:
    """Each folder through the whole application (series selection, HU volume, classifier, aggregation)."""
    from monai_app.runner import StudyRunner

    runner = StudyRunner(model)
    return [runner.run(folder, out / folder.name) for folder in folders]


if __name__ == "__main__":
    sys.exit(main())
