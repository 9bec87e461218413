"""The step profile (``distrec.train.profiling``): phases and collectives attributed from real
``torch.profiler`` events, and the attribution rules checked on a hand-built event tree."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from distrec.train.profiling import breakdown, collective_kind, phase, profiled


@dataclass
class _Ev:
    name: str
    cpu_time_total: float  # microseconds, as torch.profiler reports
    cpu_parent: "_Ev | None" = None
    thread: int = 1


def test_breakdown_attributes_outermost_collectives_to_their_phase():
    fwd = _Ev("distrec.forward", 3e6)
    bwd = _Ev("distrec.backward", 5e6)
    opt = _Ev("distrec.optimizer", 1e6)
    gather_f = _Ev("c10d::allgather_", 0.5e6, fwd)
    inner = _Ev("record_param_comms", 0.4e6, gather_f)  # not an all-gather name: ignored
    nested = _Ev("gloo:all_gather", 0.3e6, gather_f)  # inside an all-gather: not counted twice
    gather_b = _Ev("all_gather_into_tensor", 0.25e6, bwd)
    scatter = _Ev("c10d::_reduce_scatter_base_", 2e6, bwd)
    reduce = _Ev("c10d::allreduce_", 0.1e6)  # outside every phase: the host's
    recompute = _Ev("CheckpointFunctionBackward", 1.5e6, bwd)
    on_backend = _Ev("gloo:all_gather", 0.6e6, None, thread=2)  # the backend's thread: not a call
    out = breakdown([fwd, bwd, opt, gather_f, inner, nested, gather_b, scatter, reduce, recompute, on_backend],
                    step_s=10.0, data_wait_s=0.2)
    assert out["phases"] == {"forward": 3.0, "backward": 5.0, "optimizer": 1.0, "data_wait": 0.2, "host": 1.0}
    assert out["collectives"]["all_gather"] == {"calls": 2, "s": 0.75, "by_phase": {"forward": 0.5, "backward": 0.25},
                                                "backend_s": 0.6}
    assert out["collectives"]["reduce_scatter"]["by_phase"] == {"backward": 2.0}
    assert out["collectives"]["all_reduce"]["by_phase"] == {"host": pytest.approx(0.1)}
    assert out["recompute_s"] == 1.5


@pytest.mark.parametrize("name, kind", [("c10d::allgather_", "all_gather"), ("nccl:all_gather", "all_gather"),
                                        ("c10d::reduce_scatter_", "reduce_scatter"),
                                        ("c10d::allreduce_", "all_reduce"), ("c10d::broadcast_", "broadcast"),
                                        ("aten::mm", None)])
def test_collective_kinds(name, kind):
    assert collective_kind(name) == kind


class _Timer:
    seconds = {"data_wait": 0.05}


def test_real_profile_of_a_step_with_a_collective(tmp_path, monkeypatch):
    """One process group of one rank (gloo): the all-reduce in the backward range is found there."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
        x = torch.randn(32, 64)
        path = tmp_path / "profile.json"
        with profiled(path, True, _Timer()):
            with phase("forward"):
                loss = model(x).pow(2).mean()
            with phase("backward"):
                loss.backward()
                for p in model.parameters():
                    dist.all_reduce(p.grad)
            with phase("optimizer"):
                torch.optim.SGD(model.parameters(), lr=0.1).step()
        with profiled(tmp_path / "off.json", False, _Timer()):
            pass
    finally:
        dist.destroy_process_group()
    report = json.loads(path.read_text())
    assert not (tmp_path / "off.json").exists()
    assert report["collectives"]["all_reduce"]["calls"] == 4  # two weights, two biases
    assert set(report["collectives"]["all_reduce"]["by_phase"]) == {"backward"}
    assert report["collectives"]["all_reduce"]["backend_s"] > 0  # gloo's own thread
    ph = report["phases"]
    assert ph["forward"] > 0 and ph["backward"] > 0 and ph["optimizer"] > 0 and ph["data_wait"] == 0.05
    assert ph["forward"] + ph["backward"] + ph["optimizer"] + ph["host"] == pytest.approx(report["step_s"], rel=1e-6)
    assert report["top_ops"] and all(o["self_cpu_s"] >= 0 for o in report["top_ops"])
