"""Per-stage time and peak memory of the application, and the classifier's slice rate next to this
machine's fp32 GEMM rate, measured in the same run.

    python bench/bench_app.py [--model DIR] [--repeat 3] [--markdown]

Cases: a synthetic 32-slice 5 mm study (256x256 slices) and, when ../shared/data is present, the real
238-slice 0.625 mm CQ500 series. Each case runs in a fresh subprocess so its peak RSS is its own; the
process start and the model load are reported separately and excluded from the study time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CQ500 = REPO.parent / "shared" / "data" / "cq500-dicom" / "CQ500-CT-0"


def gemm_gflops(seconds: float = 2.0, n: int = 2048) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def classifier_rate(model_dir: str | None, precision: str, n: int = 32) -> tuple[float, float]:
    """(slices/s, GFLOP per slice) of the classifier alone on random inputs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from monai_app.pipeline.network import load_artifact
    from monai_app.pipeline.slice_classifier import SliceClassifier

    model, config = load_artifact(model_dir)
    x = torch.rand(n, config.in_channels, config.input_size, config.input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    gflop = counter.get_total_flops() / 1e9 * (2 if config.tta_flip else 1)  # TTA: slice + mirror, two passes
    clf = SliceClassifier(model, config, batch_size=16, precision=precision)
    clf(x[:16])
    start = time.perf_counter()
    clf(x)
    return n / (time.perf_counter() - start), gflop


def run_case(case: str, model_dir: str | None) -> dict:
    """Child process: time each stage of one study; report peak RSS."""
    import numpy as np

    from monai_app import stages
    from monai_app.app_config import AppConfig
    from monai_app.model_bundle import ModelBundle
    from monai_app.runner import StudyRunner

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if case == "phantom32":
            from training.phantoms import PhantomSpec, make_phantom, write_dicom_series

            study = Path(tmp) / "in"
            write_dicom_series(
                make_phantom(PhantomSpec(n_slices=32, size=256, slice_thickness=5.0, bleed="subdural", seed=1)), study
            )
        else:
            study = CQ500
        t = time.perf_counter()
        app_config = AppConfig()
        bundle = ModelBundle.load(model_dir, app_config)
        timings["model load"] = time.perf_counter() - t
        # the whole application first (SDK operators and scheduler, as the service runs it, model loaded once),
        # so the process's peak RSS at this point is the application's own
        runner = StudyRunner.from_bundle(bundle, app_config)
        t = time.perf_counter()
        whole = runner.run(study, Path(tmp) / "out2")
        timings["whole app (SDK run)"] = time.perf_counter() - t
        if whole.decision.value == "NOT_ANALYZED":  # a failed run is fast: never publish its time
            raise SystemExit(f"{case}: the whole app did not analyse the study: {whole.message}")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        def timed(name, fn, *a):
            t0 = time.perf_counter()
            out = fn(*a)
            timings[name] = time.perf_counter() - t0
            return out

        scan = timed("scan headers", stages.scan, study)
        study_info = stages.pick_study(scan)
        selected = timed("select series", stages.select, study_info, app_config)
        prepared = timed("volume+slabs+window", stages.prepare, selected, bundle.config, app_config)
        probs = timed("classify", stages.classify, prepared, bundle.classifier)
        result = timed("aggregate", stages.conclude, prepared, probs, bundle.config, app_config)
        images = timed("grad-cam", stages.explain, prepared, result, bundle.explainer, app_config)
        timed(
            "write SC+SR", stages.write_outputs, selected.series.datasets, result, images, Path(tmp) / "out", prepared
        )
        n_slices, n_slabs = len(prepared.datasets), len(prepared.members)
    return {
        "case": case,
        "slices": n_slices,
        "slabs": n_slabs,
        "timings": timings,
        "peak_rss_mb": peak_mb,
        "decision": result.decision.value,
        "probability": float(np.round(result.probability or 0, 4)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model)))
        return 0

    from monai_app.machine import describe as describe_machine

    print(f"machine: {describe_machine()}")
    gemm = gemm_gflops()
    print(f"fp32 GEMM (2048^3 torch.mm): {gemm:.1f} GFLOP/s\n")
    print(
        "| classifier precision | slices/s | ms/slice | GFLOP/slice (incl. TTA passes) | achieved GFLOP/s | share of fp32 GEMM rate |"
    )
    print("|---|---|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        rate, gflop = classifier_rate(args.model, precision)
        print(
            f"| {precision} | {rate:.1f} | {1000 / rate:.1f} | {gflop:.2f} | {rate * gflop:.1f} | {rate * gflop / gemm:.0%} |"
        )
    cases = ["phantom32"] + (["cq500"] if CQ500.is_dir() else [])
    results = []
    for case in cases:
        cmd = [sys.executable, __file__, "--case", case] + (["--model", args.model] if args.model else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        if out.returncode != 0:
            print(f"case {case} failed:\n{out.stderr[-2000:]}")
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if not results:
        return 1
    stage_names = list(results[0]["timings"])
    print(
        "\n| stage (s) | "
        + " | ".join(f"{r['case']} ({r['slices']} slices -> {r['slabs']} slabs)" for r in results)
        + " |"
    )
    print("|---|" + "---|" * len(results))
    for name in stage_names:
        print(f"| {name} | " + " | ".join(f"{r['timings'].get(name, float('nan')):.3f}" for r in results) + " |")
    print("| peak RSS of the whole app run (MB) | " + " | ".join(f"{r['peak_rss_mb']:.0f}" for r in results) + " |")
    print("| result | " + " | ".join(f"{r['decision']} {r['probability']:.3f}" for r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
