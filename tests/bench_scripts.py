"""Load a script of jobs/bench or jobs/experiments as a module, so tests call it in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def load_bench(name: str, folder: str = "bench") -> ModuleType:
    """``jobs/<folder>/<name>.py`` as a fresh module named ``name``; its folder is importable, as
    when the script runs (``python jobs/bench/x.py`` puts ``jobs/bench`` first on the path)."""
    import sys

    if str(JOBS / folder) not in sys.path:
        sys.path.insert(0, str(JOBS / folder))
    spec = importlib.util.spec_from_file_location(name, JOBS / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
