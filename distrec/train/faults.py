"""Fault injection and consumption records, for proving recovery (tests, ``jobs/soak.yaml``).

``train.kill_at_steps``: the last rank SIGKILLs its own process right after the optimiser
update of each listed step, before that step is logged or checkpointed, once per step per run
(a marker file in the run folder, written before the kill, keeps the restarted attempt from
killing itself again). Ray Train then restarts the worker group from the latest checkpoint
(``ray.max_failures`` must allow it) and the steps after that checkpoint run again.

``train.record_samples``: every rank appends ``{"epoch", "step", "ids"}`` per optimiser step to
``samples/rank<r>.jsonl``. A step that ran twice (before a kill and after the restart) appears
twice; :func:`consumed` keeps its last record, the one whose update survived.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable
from pathlib import Path


def maybe_kill(run_dir: Path, steps: Iterable[int], step: int, rank: int, world: int) -> None:
    """SIGKILL this process if ``step`` is listed, this is the last rank, and it was not done before."""
    if step not in set(steps) or rank != world - 1:
        return
    marker = run_dir / "faults" / f"killed_at_step_{step}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"pid {os.getpid()} rank {rank}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def record(run_dir: Path, rank: int, epoch: int, step: int, ids: Iterable[int]) -> None:
    folder = run_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"epoch": epoch, "step": step, "ids": [int(i) for i in ids]})
    with open(folder / f"rank{rank}.jsonl", "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def consumed(run_dir: Path) -> tuple[dict[int, list[int]], int]:
    """``({epoch: sample ids consumed, all ranks}, raw record count)``; the last record of a step wins."""
    last: dict[tuple[int, int, int], list[int]] = {}
    raw = 0
    for file in sorted((run_dir / "samples").glob("rank*.jsonl")):
        rank = int(file.stem[4:])
        for line in file.read_text().splitlines():
            rec = json.loads(line)
            last[(rank, rec["epoch"], rec["step"])] = rec["ids"]
            raw += 1
    out: dict[int, list[int]] = {}
    for (_, epoch, _), ids in sorted(last.items()):
        out.setdefault(epoch, []).extend(ids)
    return out, raw
