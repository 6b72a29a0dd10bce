"""``ich-triage``: run (a folder, the MAP contract), predict (single pictures), serve (the DICOM service), demo.

Exit codes a script can rely on (also for ``python -m monai_app``):

====  =====================================================================
0     every study analysed (POSITIVE or NEGATIVE)
1     internal error (a bug: please report it)
2     usage error, or the input does not exist / cannot be read
3     model not found or invalid
4     a study was NOT_ANALYZED (no DICOM, no usable series, ...); its SR/SC/report were written
====  =====================================================================
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path

logger = logging.getLogger("ich-triage")


class ExitCode(IntEnum):
    OK = 0
    INTERNAL_ERROR = 1
    BAD_INPUT = 2
    MODEL_ERROR = 3
    NOT_ANALYZED = 4


def fail(code: ExitCode, message: str) -> int:
    print(f"ich-triage: error: {message}", file=sys.stderr)
    return int(code)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("holoscan", "highdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


# ------------------------------------------------------------------ run
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", help="input folder of DICOM files (default: $HOLOSCAN_INPUT_PATH)")
    p.add_argument("-o", "--output", help="output folder (default: $HOLOSCAN_OUTPUT_PATH)")
    p.add_argument("-m", "--model", help="model folder (default: $HOLOSCAN_MODEL_PATH if it holds a model, else the bundled model)")
    p.add_argument("--app-config", help="application settings JSON (selection rules, slab thickness, ...)")
    p.add_argument("-l", "--log-level", default="INFO")


def resolve_paths(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str] = os.environ) -> tuple[Path, Path, str | None]:
    """The MAP contract: flags over HOLOSCAN_* variables over the SDK defaults ('input', 'output')."""
    input_dir = Path(args.input or environ.get("HOLOSCAN_INPUT_PATH") or "input")
    output_dir = Path(args.output or environ.get("HOLOSCAN_OUTPUT_PATH") or "output")
    model = args.model or environ.get("HOLOSCAN_MODEL_PATH") or None
    return input_dir, output_dir, model


def run(args: argparse.Namespace) -> int:
    from dicom_io.result import TriageDecision
    from monai_app.app_config import AppConfig
    from monai_app.pipeline.network import ModelArtifactError, resolve_model_dir
    from monai_app.runner import StudyRunner

    _setup_logging(args.log_level)
    input_dir, output_dir, model = resolve_paths(args)
    if not input_dir.exists():
        return fail(ExitCode.BAD_INPUT, f"input not found: {input_dir}")
    if not os.access(input_dir, os.R_OK):
        return fail(ExitCode.BAD_INPUT, f"input not readable: {input_dir}")
    if model is not None:
        try:
            resolve_model_dir(model)
        except ModelArtifactError:
            if not args.model:  # HOLOSCAN_MODEL_PATH without our artifact: fall back to the bundled one
                logger.info("no model artifact in HOLOSCAN_MODEL_PATH=%s; using the bundled model", model)
                model = None
    try:
        app_config = AppConfig.from_file(args.app_config)
    except (OSError, ValueError) as exc:
        return fail(ExitCode.BAD_INPUT, f"bad app config: {exc}")
    try:
        runner = StudyRunner(model, app_config)
    except ModelArtifactError as exc:
        return fail(ExitCode.MODEL_ERROR, str(exc))
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(ExitCode.BAD_INPUT, f"cannot create output folder {output_dir}: {exc}")
    results = runner.run_folder(input_dir, output_dir)
    code = ExitCode.OK
    for result in results:
        if result.decision is TriageDecision.NOT_ANALYZED:
            print(f"ich-triage: {result.study_instance_uid or input_dir}: NOT_ANALYZED ({result.reason.value if result.reason else ''}): {result.message}", file=sys.stderr)
            code = ExitCode.NOT_ANALYZED
        else:
            print(f"{result.study_instance_uid}: {result.decision.value} probability {result.probability:.3f} (threshold {result.threshold:.3f})")
    print(f"outputs in {output_dir}")
    return int(code)


# ------------------------------------------------------------------ predict
def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="PNG/JPG (any mode/size, taken as brain-window images) or DICOM slices")
    p.add_argument("-m", "--model", help="model folder (default: the bundled model)")
    p.add_argument("-o", "--output", default=".", help="folder for the three-panel PNGs (default: current folder)")
    p.add_argument("-l", "--log-level", default="WARNING")


def predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from monai_app.app_config import AppConfig
    from monai_app.model_bundle import ModelBundle
    from monai_app.picture_io import UnreadablePictureError, read_picture
    from monai_app.pipeline.network import ModelArtifactError
    from monai_app.pipeline.overlay import three_panel
    from monai_app.pipeline.preprocess import fit_to_input, uncrop_map

    _setup_logging(args.log_level)
    try:
        bundle = ModelBundle.load(args.model, AppConfig())
    except ModelArtifactError as exc:
        return fail(ExitCode.MODEL_ERROR, str(exc))
    config = bundle.config
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    code = ExitCode.OK
    for name in args.files:
        path = Path(name)
        try:
            gray = read_picture(path)
        except (UnreadablePictureError, FileNotFoundError) as exc:
            print(f"ich-triage: error: {exc}", file=sys.stderr)
            code = ExitCode.BAD_INPUT
            continue
        x, box = fit_to_input(np.repeat(gray[None], config.in_channels, axis=0), config.input_size, config.crop_to_head)
        probability = float(bundle.classifier(x[None])[0, 0])
        cam = uncrop_map(bundle.explainer(x[None])[0], box, gray.shape)
        label = "POSITIVE" if probability >= config.threshold else "NEGATIVE"
        title = f"{path.name}: {label} p={probability:.3f} (threshold {config.threshold:.3f}) {config.name} {config.version}"
        png = out_dir / f"{path.stem}_gradcam.png"
        Image.fromarray(three_panel(gray, cam, title)).save(png)
        print(f"{path}\t{probability:.4f}\t{label}\t{png}")
    return int(code)


# ------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    from monai_app import demo, service

    parser = argparse.ArgumentParser(prog="ich-triage", description="Intracranial hemorrhage triage for head CT (research use only, not for diagnosis)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="analyse a folder of DICOM files (the MONAI Application Package contract)"))
    add_predict_arguments(sub.add_parser("predict", help="score single pictures or DICOM slices and write Grad-CAM panels"))
    service.add_arguments(sub.add_parser("serve", help="run the DICOM service (SCP -> queue -> app -> SCU)"))
    demo.add_arguments(sub.add_parser("demo", help="the whole loop on this machine: service + local PACS + a study"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return run(args)
        if args.command == "predict":
            return predict(args)
        if args.command == "serve":
            from monai_app import service

            return service.run_service(args)
        if args.command == "demo":
            from monai_app import demo

            return demo.run_demo(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: one line, not a traceback
        logger.debug("internal error", exc_info=True)
        return fail(ExitCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc} (run with -l DEBUG for details)")
    return fail(ExitCode.BAD_INPUT, f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
