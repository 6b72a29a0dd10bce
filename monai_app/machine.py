"""What machine a measurement ran on, for the tables of ``bench/`` and ``training.first_stage``."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next(
        (x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), platform.processor() or "unknown CPU"
    )


def describe() -> str:
    """One line: host, CPU, cores, torch version and its thread count."""
    import torch

    return f"{platform.node()} | {cpu_model()} | {os.cpu_count()} cores | torch {torch.__version__} threads {torch.get_num_threads()}"
