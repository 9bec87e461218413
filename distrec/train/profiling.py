"""One optimiser step under ``torch.profiler``: where its time goes, per rank.

``debug.profile_step: N`` makes every rank record step N (its micro-batches' forwards and
backwards, the optimiser, and the collectives DeepSpeed issues inside them) and write
``diagnostics/profile_rank<r>_step<N>.json``:

- ``phases``: seconds inside the loop's ``distrec.forward`` / ``distrec.backward`` /
  ``distrec.optimizer`` ranges, ``data_wait`` (time waiting for the step's rows, from the step
  timer) and ``host`` (the rest of the step: batching, loss bookkeeping, Python);
- ``collectives``: per kind (all-gather, reduce-scatter, all-reduce, broadcast) the calls and
  seconds of the outermost profiler event of that kind on the training thread, split by the
  phase it ran in (ZeRO-3 gathers parameters in the forward and the backward, and
  reduce-scatters gradients in the backward), and ``backend_s``: the time the communication
  backend's own threads spent on that kind (gloo runs each collective there; for an
  asynchronous collective the training thread only pays the launch and the wait);
- ``recompute_s``: time in activation-checkpointing recomputation, when it is on;
- ``top_ops``: the operators with the most self time.

CPU times are wall times of the calling thread (``cpu_time_total``); on a GPU the kernels'
device time is added per operator. Nothing is recorded unless the step is named.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

PHASES = ("forward", "backward", "optimizer")
_KINDS = {"all_gather": ("allgather", "all_gather"), "reduce_scatter": ("reduce_scatter", "reducescatter"),
          "all_reduce": ("allreduce", "all_reduce"), "broadcast": ("broadcast",)}


def phase(name: str):
    """The profiler range of a loop phase (``forward``, ``backward``, ``optimizer``)."""
    return record_function(f"distrec.{name}")


def collective_kind(name: str) -> str | None:
    """``"all_gather"`` / ``"reduce_scatter"`` / ``"all_reduce"`` / ``"broadcast"`` for an event name, else None."""
    lower = name.lower()
    return next((kind for kind, keys in _KINDS.items() if any(k in lower for k in keys)), None)


def _ancestors(event) -> Iterator[Any]:
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def breakdown(events: Iterable[Any], step_s: float, data_wait_s: float) -> dict[str, Any]:
    """Phases, collectives and recomputation from a profiler's ``events()`` (see the module doc)."""
    events = list(events)
    phases = dict.fromkeys(PHASES, 0.0)
    collectives: dict[str, dict[str, Any]] = {}
    recompute = 0.0
    training_threads = {ev.thread for ev in events if ev.name.startswith("distrec.")}
    for ev in events:
        seconds = ev.cpu_time_total / 1e6
        if ev.name.startswith("distrec.") and ev.name[len("distrec."):] in phases:
            phases[ev.name[len("distrec."):]] += seconds
            continue
        if "checkpoint" in ev.name.lower() and "backward" in ev.name.lower():
            if not any("checkpoint" in a.name.lower() for a in _ancestors(ev)):
                recompute += seconds
            continue
        kind = collective_kind(ev.name)
        if kind is None or any(collective_kind(a.name) for a in _ancestors(ev)):
            continue
        entry = collectives.setdefault(kind, {"calls": 0, "s": 0.0, "by_phase": {}, "backend_s": 0.0})
        if training_threads and ev.thread not in training_threads:
            entry["backend_s"] += seconds
            continue
        where = next((a.name[len("distrec."):] for a in _ancestors(ev) if a.name.startswith("distrec.")), "host")
        entry["calls"] += 1
        entry["s"] += seconds
        entry["by_phase"][where] = entry["by_phase"].get(where, 0.0) + seconds
    inside = sum(phases.values())
    return {"step_s": step_s, "phases": {**phases, "data_wait": data_wait_s, "host": max(step_s - inside, 0.0)},
            "collectives": collectives, "recompute_s": recompute}


@contextmanager
def profiled(path: Path, enabled: bool, step_timer) -> Iterator[None]:
    """Profile the enclosed step when ``enabled`` and write its breakdown to ``path``."""
    if not enabled:
        yield
        return
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        yield
    step_s = time.perf_counter() - started
    report = breakdown(prof.events(), step_s, step_timer.seconds.get("data_wait", 0.0))
    ops = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:20]
    report["top_ops"] = [{"name": a.key, "calls": a.count, "self_cpu_s": a.self_cpu_time_total / 1e6,
                          **({"device_s": a.self_device_time_total / 1e6} if torch.cuda.is_available() else {})}
                         for a in ops]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
