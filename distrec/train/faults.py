"""Fault injection and consumption records, for proving recovery (tests, ``jobs/soak.yaml``).

The job config's ``debug`` section switches them on; the training loop calls them through
one :class:`Hooks` object.

``debug.kill_at_steps``: the last rank SIGKILLs its own process right after the optimiser
update of each listed step, before that step is logged or checkpointed, once per step per run
(a marker file in the run folder, written before the kill, keeps the restarted attempt from
killing itself again). Ray Train then restarts the worker group from the latest checkpoint
(``ray.max_failures`` must allow it) and the steps after that checkpoint run again.

Ray Train's controller registers a reported checkpoint when it next polls the workers; a
worker that dies before that poll takes the report with it and the group restarts from the
checkpoint before. The injected kill therefore first waits until the controller's snapshot
(``checkpoint_manager_snapshot.json`` beside the run folder) lists this attempt's latest
checkpoint, so the scenario it stages is always "killed after checkpoint N was committed".

``debug.kill_in_checkpoint_at_steps``: the last rank SIGKILLs itself half-way through copying
its part of that step's checkpoint into storage (after Ray Train has named the checkpoint
folder, so the folder really is left half-written). Ray Train never registers it, and the
restart resumes from the checkpoint before.

``debug.record_samples``: every rank appends ``{"epoch", "step", "ids"}`` per optimiser step to
``samples/rank<r>.jsonl``. A step that ran twice (before a kill and after the restart) appears
twice; :func:`consumed` keeps its last record, the one whose update survived.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

SNAPSHOT = "checkpoint_manager_snapshot.json"
"""Ray Train V2's record of registered checkpoints, in the run's storage folder (run_dir's parent)."""


class Hooks:
    """The loop's one seam for fault injection: ``after_step`` (kill, record) and
    ``checkpoint_upload`` (a half-way dying upload, or None)."""

    def __init__(self, debug, run_dir: Path, rank: int, world: int) -> None:
        self.debug, self.run_dir, self.rank, self.world = debug, run_dir, rank, world

    def after_step(self, step: int, epoch: int, step_in_epoch: int, ids: Iterable[int], saved_step: int) -> None:
        maybe_kill(self.run_dir, self.debug.kill_at_steps, step, self.rank, self.world, saved_step)
        if self.debug.record_samples:
            record(self.run_dir, self.rank, epoch, step_in_epoch, ids)

    def checkpoint_upload(self, step: int, saved_step: int):
        return partial_upload(self.run_dir, step, self.rank, self.world, self.debug.kill_in_checkpoint_at_steps,
                              saved_step)


def committed_step(storage_dir: Path) -> int | None:
    """The ``step`` metric of the latest checkpoint Ray Train has registered for this run, or None."""
    try:
        latest = json.loads((storage_dir / SNAPSHOT).read_text()).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being rewritten
        return None
    return None if not latest else latest.get("metrics", {}).get("step")


def wait_until_committed(storage_dir: Path, step: int, wait_s: float, poll_s: float = 0.2) -> bool:
    """Block until Ray Train has registered a checkpoint of ``step`` or later (at once for
    ``step`` 0); False on timeout."""
    deadline = time.monotonic() + wait_s
    while (committed_step(storage_dir) or 0) < step:
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def _armed(run_dir: Path, name: str, steps: Iterable[int], step: int, rank: int, world: int) -> Path | None:
    """The marker to write before killing at ``step``, or None when this rank must not kill.

    Only the last rank kills, only at listed steps, and only once per run (the marker file
    keeps the restarted attempt from killing itself again)."""
    marker = run_dir / "faults" / f"{name}_{step}"
    return None if step not in set(steps) or rank != world - 1 or marker.exists() else marker


def maybe_kill(run_dir: Path, steps: Iterable[int], step: int, rank: int, world: int,
               saved_step: int = 0, wait_s: float = 300.0) -> None:
    """SIGKILL this process if :func:`_armed` allows it, once Ray Train has registered the
    attempt's latest checkpoint (``saved_step``; 0 = none yet), waiting at most ``wait_s``."""
    marker = _armed(run_dir, "killed_at_step", steps, step, rank, world)
    if marker is not None:
        wait_until_committed(run_dir.parent, saved_step, wait_s)
        _kill(marker, f"pid {os.getpid()} rank {rank}\n")


def _kill(marker: Path, note: str) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(note)
    os.kill(os.getpid(), signal.SIGKILL)


def partial_upload(run_dir: Path, step: int, rank: int, world: int, steps: Iterable[int],
                   saved_step: int = 0, wait_s: float = 300.0):
    """A ``checkpoint_upload_fn`` for ``ray.train.report`` that dies half-way, or None to upload normally.

    The returned function copies this rank's checkpoint files (sorted by name) into the named
    storage folder one by one and SIGKILLs the process after half of them; the marker file
    records which folder was left partial.
    """
    marker = _armed(run_dir, "killed_in_checkpoint", steps, step, rank, world)
    if marker is None:
        return None

    def upload(checkpoint, dir_name: str):
        import ray.train

        wait_until_committed(run_dir.parent, saved_step, wait_s)
        target = Path(ray.train.get_context().get_storage().experiment_fs_path) / dir_name
        files = sorted(p for p in Path(checkpoint.path).rglob("*") if p.is_file())
        for i, file in enumerate(files):
            if i == len(files) // 2:
                _kill(marker, f"{dir_name} {i} of {len(files)} files copied by rank {rank}\n")
            dest = target / file.relative_to(checkpoint.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(file.read_bytes())
        raise AssertionError("unreachable: the upload is killed half-way")

    return upload


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
