"""Host memory per rank while a ZeRO-3 job loads its backbone: 1 rank vs 2 ranks, and a
plain (unpartitioned) load as the baseline measured in the same run.

Each configuration runs in fresh processes (gloo on 127.0.0.1) that build the model exactly
as a distrec worker does (``DeepSpeedStrategy.model_init_context`` + ``build_model``), then
``deepspeed.initialize``. Peak RSS (VmHWM) is read after the load and after initialisation.

    .venv/bin/python jobs/bench/load_memory.py --model smollm2-135m
    .venv/bin/python jobs/bench/load_memory.py --model tiny --no-append   # quick check
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

RESULTS = Path(__file__).with_name("RESULTS.md")


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, model: str, zero_stage: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo", DS_ACCELERATOR="cpu")
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    from distrec.config import load_job_config
    from distrec.model.backbone import build_model
    from distrec.train.strategy import DeepSpeedStrategy

    # replicate_frozen off: this measures ZeRO-3's partitioning of the (here frozen) backbone
    job = load_job_config(None, [f"model.name_or_path={model}", f"deepspeed.zero_stage={zero_stage}",
                                 "deepspeed.replicate_frozen=false"])
    strategy = DeepSpeedStrategy(job.deepspeed, job.train, use_gpu=False)
    base = _vm_hwm_bytes()
    with strategy.model_init_context():
        net = build_model(job.model)
    after_load = _vm_hwm_bytes()
    full = sum(getattr(p, "ds_numel", p.numel()) for p in net.parameters())
    local = sum(strategy.local_numel(p)[0] for p in net.parameters())
    for p in net.parameters():
        p.requires_grad_(False)
    net.get_input_embeddings().weight.requires_grad_(True)  # something to optimise
    strategy.initialize(net, total_steps=1)
    after_init = _vm_hwm_bytes()
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "before": base, "after_load": after_load, "after_init": after_init,
         "params_full": full, "params_local": local}))
    dist.barrier()  # no rank tears the group down while a peer still uses it
    dist.destroy_process_group()


def measure(model: str, world: int, zero_stage: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, _free_port(), model, zero_stage, out), nprocs=world, join=True)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    from distrec.config import ModelConfig
    from distrec.model.backbone import resolve_model_dir

    model_dir = resolve_model_dir(ModelConfig(name_or_path=args.model))  # fetch/convert outside the timing
    model_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    rows = []
    for label, world, stage in (("plain load (ZeRO-0), 1 rank", 1, 0), ("ZeRO-3, 1 rank", 1, 3), ("ZeRO-3, 2 ranks", 2, 3)):
        for r in measure(args.model, world, stage):
            rows.append({"config": label, **r})
    gib = 2**30
    lines = [
        "| config | rank | peak RSS after load (GiB) | after deepspeed.initialize (GiB) | params held / full |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['config']} | {r['rank']} | {r['after_load'] / gib:.2f} | {r['after_init'] / gib:.2f} | "
                     f"{r['params_local'] / 1e6:.1f}M / {r['params_full'] / 1e6:.1f}M |")
    two = [r for r in rows if r["config"] == "ZeRO-3, 2 ranks"]
    one = [r for r in rows if r["config"] == "ZeRO-3, 1 rank"]
    ratio = max(r["after_init"] for r in two) / one[0]["after_init"]
    goal = model_bytes / 2 + 3 * 10**9
    summary = (f"model {args.model}: {model_bytes / 1e6:.0f} MB of fp32 weights; 2-rank / 1-rank peak RSS per rank = "
               f"{ratio:.2f}; goal per rank <= model/ranks + 3 GB = {goal / gib:.2f} GiB: "
               f"{'met' if max(r['after_init'] for r in two) <= goal else 'NOT met'}")
    table = "\n".join(lines)
    print(table)
    print(summary)
    if not args.no_append:
        with RESULTS.open("a") as fh:
            fh.write(f"\n## Host memory while loading under ZeRO-3 — {datetime.date.today()}\n\n"
                     f"Device: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only; "
                     f"torch {torch.__version__}. Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`\n\n"
                     f"{table}\n\n{summary}\n")
    return rows


if __name__ == "__main__":
    main()
