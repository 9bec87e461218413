"""What a run ran on: host, CPU, threads, library versions and a hash of its configuration.

Two runs of the same command can differ because the machine differs (CPU model and its
floating-point kernels, thread count, library versions) or because the configuration differs.
:func:`run_environment` records both, so ``metrics_<mode>.json`` and ``report.md`` tell such
runs apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

LIBRARIES = ("distrec", "torch", "deepspeed", "ray", "transformers", "peft", "tokenizers", "safetensors",
             "numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "faiss-cpu", "faiss-gpu",
             "sentence-transformers")
"""Distributions whose installed version is recorded (``None`` when not installed)."""

RUN_IDENTITY_KEYS = frozenset({"ray.run_name", "ray.storage_path", "ray.address"})
"""Config keys that name or place a run without changing what it computes; left out of the hash."""



def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"

def config_hash(config: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the config as canonical JSON (sorted keys).

    ``config`` is the nested dict of a job (``config_loader.to_dict``); the keys in
    :data:`RUN_IDENTITY_KEYS` are dropped first, so runs of one configuration under different
    names or folders share a hash. Values JSON cannot hold are hashed as their ``str``.
    """
    def strip(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in RUN_IDENTITY_KEYS:
                continue
            out[key] = strip(value, f"{name}.") if isinstance(value, Mapping) else value
        return out

    text = json.dumps(strip(config, ""), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """``{distribution: installed version or None}``."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    except Exception:  # noqa: BLE001 - a broken driver must not stop the record
        return "unknown"
    return None


def run_environment(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The machine and software of this process, and the config hash.

    Returns:
        ``hostname``, ``cpu_model`` (/proc/cpuinfo), ``cpu_count`` (logical CPUs of the
        machine), ``cpus_usable`` (this process's affinity), ``torch_threads`` (intra-op
        threads of this process), ``omp_num_threads`` (the variable, or None), ``gpu`` (None
        without CUDA), ``python``, ``platform``, ``libraries`` (:func:`library_versions`) and
        ``config_hash`` (:func:`config_hash`; None without a config).
    """
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        threads = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": _gpu(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": library_versions(),
        "config_hash": config_hash(config) if config is not None else None,
    }
