"""A one-line description of the machine a benchmark or report ran on (device, cores, load)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def describe_host() -> str:
    """``"<cpu>, <n> cores, <GPU name | no GPU>; load average <x> at start"``."""
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001 - best effort, the report still gets written
        gpu = f"GPU unknown ({type(exc).__name__})"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu_model()}, {os.cpu_count()} cores, {gpu}; load average {load:.1f} at start"
