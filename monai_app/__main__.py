"""``python -m monai_app -i IN -o OUT [-m MODEL]``: the MONAI Application Package entry point.

Paths come from the flags, else ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH``.
Exit codes as ``ich-triage run`` (see :mod:`monai_app.cli`).
"""

from __future__ import annotations

import argparse
import sys

from monai_app.cli import ExitCode, add_run_arguments, fail, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_app", description="ICH triage on a DICOM folder (MAP contract)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as exc:  # one line, not a traceback
        return fail(ExitCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
