"""A Llama-2-7B-shaped model through the real `distrec train` path on this CPU machine.

Random weights built directly under ZeRO-3 partitioned init (``model.init: random``; no 27 GB
file is read or written), Ray Train with 2 ranks over gloo, bf16, CFLoRA (generated, so the DIN
CRM trains first in the same loop), a short ML-100K CTR run: ``--steps`` optimiser steps of one
row per rank, paused after step ``--pause`` (a checkpoint), resumed by a second `distrec train`
with the same run name, then the adapter export and a 2-row validation and test.

Records per rank: peak host RSS (VmHWM) of each attempt against the goal
``model bytes / ranks + 3 GB``; the checkpoint's bytes on disk (adapter-sized, not base-sized);
step time; the export's time (it gathers the partitioned adapter). Appends a block to
RESULTS.md with ``--record``. Not in the suite: about 15 minutes on 2 cores.

    .venv/bin/python jobs/bench/llama7b_cpu.py --record
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
REPO = Path(__file__).resolve().parents[2]
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
             "initializer_range": 0.02}


def overrides(storage: Path, steps: int, pause: int | None, layers: int) -> list[str]:
    shape = {**LLAMA2_7B, "num_hidden_layers": layers}
    spec = "{" + ", ".join(f"{k}: {v}" for k, v in shape.items()) + "}"
    out = [
        "data.dataset=ml-100k", "data.task=ctr", "data.train_size=64", "data.valid_size=2", "data.test_size=2",
        "prompt.history_k=3", "prompt.max_length=160",
        "model.name_or_path=tiny", "model.init=random", f"model.tiny={spec}", "model.dtype=bf16",
        "deepspeed.zero_stage=3", "deepspeed.precision=bf16",
        # At most ~100M gathered parameters alive at once (DeepSpeed's default, 1e9, is 2 GB of
        # bf16 per rank: two ranks of a 7B model would not fit in 24 GiB with it).
        "deepspeed.extra={zero_optimization: {stage3_max_live_parameters: 100000000, "
        "stage3_max_reuse_distance: 100000000, reduce_bucket_size: 50000000}}",
        "adapter.kind=cflora", "adapter.cflora.mode=generated", "adapter.r=8",
        "train.micro_batch_size=1", "train.grad_accum=1", f"train.max_steps={steps}", "train.checkpoint_every=1",
        "train.eval_every=1000", "train.prompt_samples_to_log=0", "eval.batch_size=1", "eval.max_samples=2",
        "ray.num_workers=2", f"ray.storage_path={storage}", "ray.run_name=llama7b", "ray.num_to_keep=1",
        # glibc's dynamic mmap threshold climbs to 32 MB after the first freed gather, and the
        # heap then keeps the gathered layers' memory; a fixed 1 MB threshold returns it.
        "ray.worker_env={MALLOC_MMAP_THRESHOLD_: '1048576', MALLOC_TRIM_THRESHOLD_: '1048576'}",
    ]
    return out + ([f"train.stop_at_step={pause}"] if pause else [])


def parameters(layers: int, vocab: int = 49_152) -> int:
    h, i = LLAMA2_7B["hidden_size"], LLAMA2_7B["intermediate_size"]
    return vocab * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h  # tied head


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--pause", type=int, default=2, help="stop after this step's checkpoint; 0: no pause")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (32: Llama-2-7B)")
    parser.add_argument("--storage", default=None, help="run storage (default: a temporary folder)")
    parser.add_argument("--record", action="store_true", help="append the figures to RESULTS.md")
    args = parser.parse_args(argv)

    import os

    os.environ.setdefault("RAY_memory_usage_threshold", "0.98")  # the local Ray's OOM killer: 2 ranks of 7B fill 24 GiB
    from distrec.config import load_job_config
    from distrec.eval.tensorboard import read_scalars
    from distrec.train.launcher import run_job

    storage = Path(args.storage or tempfile.mkdtemp(prefix="llama7b-"))
    attempts = []
    for pause in ([args.pause] if args.pause else []) + [None]:
        job = load_job_config(REPO / "jobs" / "tiny.yaml", overrides(storage, args.steps, pause, args.layers))
        started = time.perf_counter()
        result = run_job(job)
        attempts.append({"pause": pause, "wall_s": round(time.perf_counter() - started, 1)})
    run = storage / "llama7b" / "distrec"
    memory = {p.stem.removeprefix("memory_"): json.loads(p.read_text())["host_peak_rss"] / 2**30
              for p in sorted((run / "diagnostics").glob("memory_rank*.json"))}
    scalars = read_scalars(run / "tensorboard")
    checkpoints = [p for p in (storage / "llama7b").glob("checkpoint_*") if p.is_dir()]
    ckpt_bytes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in checkpoints}
    n_params = parameters(args.layers)
    figures = {
        "parameters": n_params,
        "model_gib_bf16": n_params * 2 / 2**30,
        "goal_rss_gib_per_rank": n_params * 2 / 2 / 2**30 + 3,
        "peak_rss_gib": memory,
        "step_time_s": [round(v, 1) for _, v in scalars.get("throughput/step_time_s", [])],
        "export_s": [round(v, 2) for _, v in scalars.get("time/export_s", [])],
        "checkpoint_bytes": ckpt_bytes,
        "adapter_bytes": sum(f.stat().st_size for f in (run / "adapter").rglob("*") if f.is_file()),
        "attempts": attempts,
        "test": result.metrics.get("test"),
    }
    print(json.dumps(figures, indent=2, default=str))
    if args.record:
        from benchhost import describe_host

        command = "python jobs/bench/llama7b_cpu.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        lines = [f"\n## Llama-2-7B-shaped model through `distrec train` on CPU ({datetime.date.today()})\n",
                 f"- Device: {describe_host()}", f"- Command: `{command}`",
                 "- Settings: random init under ZeRO-3 partitioned init, 2 ranks over gloo, bf16, CFLoRA "
                 "(generated; DIN trained first), micro-batch 1 per rank, prompts of 3 history items (≤ 160 tokens).",
                 "", "```json", json.dumps(figures, indent=2, default=str), "```", ""]
        with RESULTS.open("a") as f:
            f.write("\n".join(lines))
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
