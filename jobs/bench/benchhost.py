"""A one-line description of the machine a benchmark ran on (device, cores, load)."""

from __future__ import annotations

import os

from distrec.eval.environment import cpu_model


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


def publish(block: str, record: bool, results) -> str:
    """Print a benchmark's Markdown block and, with ``record``, append it to ``results`` (RESULTS.md)."""
    print(block)
    if record:
        with open(results, "a") as fh:
            fh.write(block + "\n")
    return block
