"""Run one job config once per table row and seed (each row = a list of overrides).

Shared by the experiment scripts: every row gets the same config, seed and budget plus its own
overrides. A run's name is ``<prefix>-<digest>``, the digest hashing the config file, the
overrides, the row's overrides and the seed: running a table again reuses every run that
finished (its ``metrics_train.json`` is there) and resumes one that was interrupted (same
``ray.run_name``), so a long multi-seed table can be built over several sittings.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

ROWS_HELP = "comma list of row numbers to run (1-based; default all)"
SEEDS_HELP = "comma list of train.seed values, one run of every row per seed (default: the config's seed)"
ELAPSED = "table_run.json"
"""Written next to a finished run's metrics: the wall seconds ``run_job`` took."""


def pick_rows(rows: dict[str, list[str]], spec: str | None) -> dict[str, list[str]]:
    """The rows named by ``spec``, a comma list of 1-based row numbers (None: all), in table order."""
    if not spec:
        return dict(rows)
    picked = {int(i) for i in spec.split(",")}
    unknown = sorted(picked - set(range(1, len(rows) + 1)))
    if unknown:
        raise SystemExit(f"--rows: no row {unknown}; rows are 1..{len(rows)}: {list(rows)}")
    return {name: extra for i, (name, extra) in enumerate(rows.items(), start=1) if i in picked}


def parse_seeds(spec: str | None) -> list[int | None]:
    """``"42,43"`` -> ``[42, 43]``; None or empty -> ``[None]`` (the config's own ``train.seed``)."""
    if not spec:
        return [None]
    try:
        seeds = [int(s) for s in spec.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds: expected a comma list of integers, got {spec!r}") from None
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds: {spec!r} repeats a seed")
    return seeds


def run_name(prefix: str, config: str, overrides: list[str], extra: list[str], seed: int | None) -> str:
    """``<prefix>-<12 hex digits>``: the same config text, overrides, row and seed give the same name."""
    text = json.dumps([Path(config).read_text(), list(overrides), list(extra), seed])
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def seed_overrides(seed: int | None) -> list[str]:
    return [] if seed is None else [f"train.seed={seed}"]


def run_grid(config: str, overrides: list[str], rows: dict[str, list[str]], seeds: list[int | None],
             prefix: str) -> dict[tuple[str, int | None], object]:
    """Every (row, seed) as a ``RunResult``, running only those not finished before (seed-major order)."""
    from distrec.config import load_job_config
    from distrec.train.launcher import RunResult, run_job

    results: dict[tuple[str, int | None], object] = {}
    for seed in seeds:
        for row, extra in rows.items():
            name = run_name(prefix, config, overrides, extra, seed)
            job = load_job_config(config, [*overrides, *extra, *seed_overrides(seed), f"ray.run_name={name}"])
            run_dir = Path(job.ray.storage_path) / name / "distrec"
            done = run_dir / "metrics_train.json"
            if "://" not in job.ray.storage_path and done.is_file():
                elapsed = json.loads((run_dir / ELAPSED).read_text())["elapsed_s"] if (run_dir / ELAPSED).is_file() else math.nan
                result = RunResult(run_dir=run_dir, metrics=json.loads(done.read_text()), report=None, elapsed_s=elapsed)
                print(f"{row} (seed {seed}): reusing {run_dir}", flush=True)
            else:
                result = run_job(job)
                if isinstance(result.run_dir, Path) and result.metrics:
                    (result.run_dir / ELAPSED).write_text(json.dumps({"elapsed_s": result.elapsed_s}) + "\n")
            results[(row, seed)] = result
    return results
