"""Run one job config once per table row (each row = a list of overrides) and collect a Markdown table.

Shared by the experiment scripts: every row gets the same config, seed and budget plus its own
overrides, and its own run name ``<prefix>-<stamp>-<i>``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def pick_rows(rows: dict[str, list[str]], spec: str | None) -> dict[str, list[str]]:
    """The rows named by ``spec``, a comma list of 1-based row numbers (None: all), in table order."""
    if not spec:
        return dict(rows)
    picked = {int(i) for i in spec.split(",")}
    unknown = sorted(picked - set(range(1, len(rows) + 1)))
    if unknown:
        raise SystemExit(f"--rows: no row {unknown}; rows are 1..{len(rows)}: {list(rows)}")
    return {name: extra for i, (name, extra) in enumerate(rows.items(), start=1) if i in picked}


ROWS_HELP = "comma list of row numbers to run (1-based; default all)"


def run_rows(config: str, overrides: list[str], rows: dict[str, list[str]], header: list[str],
             cells: Callable[[str, object], list[str]], prefix: str) -> tuple[str, Path]:
    """``cells(row_name, RunResult) -> the row's cells after its name``; returns (table, storage folder)."""
    from distrec.config import load_job_config
    from distrec.train.launcher import run_job

    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = ["| " + " | ".join(["row", *header]) + " |", "|" + "---|" * (len(header) + 1)]
    storage = Path(".")
    for i, (row, extra) in enumerate(rows.items()):
        job = load_job_config(config, [*overrides, *extra, f"ray.run_name={prefix}-{stamp}-{i}"])
        storage = Path(job.ray.storage_path)
        result = run_job(job)
        lines.append("| " + " | ".join([row, *cells(row, result)]) + " |")
        print("\n".join(lines), flush=True)
    return "\n".join(lines), storage
