"""What DeepSpeed ZeRO-3 adds to a LoRA CTR step, outside Ray: plain PyTorch against
``DeepSpeedStrategy`` with every ZeRO-3 hook and with the idle ones pruned (the default).

    .venv/bin/python jobs/bench/engine_overhead.py [--ranks 1|2] [--tokens 180] [--steps 3]
        [--model smollm2-135m] [--results jobs/bench/RESULTS.md | --no-append]

Each rank (``--ranks`` gloo processes on 127.0.0.1, one thread each) trains the backbone with
PEFT LoRA (r 8, alpha 16, dropout 0.05 on q_proj, v_proj) on the same random micro-batch of
4 left-padded prompts of ``--tokens`` tokens, gradient accumulation 2, the answer-token loss
at the last position only (``objectives.ctr.answer_logits`` and ``ctr_loss_sum``). Rows: ``plain`` (the
model and AdamW, no DeepSpeed; rank 0 only), ``every hook`` (``deepspeed.prune_idle_hooks=false``)
and ``pruned`` (the default), each with the frozen base whole on every rank. Reports the median
optimiser-step time over ``--steps`` steps after one warm-up step, and each row over ``plain``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
RESULTS = Path(__file__).with_name("RESULTS.md")
MICRO, ACCUM = 4, 2


def _batch(tokens: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49_000, (MICRO, tokens), generator=g)
    mask = torch.ones(MICRO, tokens, dtype=torch.long)
    mask[0, :20] = 0  # two rows shorter than the longest, left-padded
    mask[1, :7] = 0
    return {"input_ids": ids, "attention_mask": mask, "answers": torch.randint(0, 49_000, (MICRO,), generator=g)}


def _model(name: str):
    from distrec.config import AdapterConfig, ModelConfig
    from distrec.model.adapters.lora import LoraAdapter
    from distrec.model.backbone import build_model

    model = build_model(ModelConfig(name_or_path=name))
    return LoraAdapter(AdapterConfig(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])).attach(model)


def _loss(model, b: dict[str, torch.Tensor]) -> torch.Tensor:
    from distrec.objectives.ctr import answer_logits, ctr_loss_sum

    return ctr_loss_sum(answer_logits(model, b["input_ids"], b["attention_mask"]), b["answers"])


def _timed(step, steps: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _plain(args, b) -> float:
    torch.manual_seed(0)
    model = _model(args.model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        for _ in range(ACCUM):
            _loss(model, b).backward()
        opt.step()
        opt.zero_grad()

    return _timed(step, args.steps)


def _deepspeed(args, b, prune: bool) -> float:
    from distrec.config import DeepSpeedConfig, TrainConfig
    from distrec.train.strategy import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(DeepSpeedConfig(zero_stage=3, precision="fp32", prune_idle_hooks=prune),
                                 TrainConfig(micro_batch_size=MICRO, grad_accum=ACCUM, lr=1e-3), use_gpu=False)
    torch.manual_seed(0)
    with strategy.model_init_context():
        model = _model(args.model)
    engine = strategy.initialize(model, total_steps=100)
    engine.train()

    def step():
        with strategy.accumulation_window():
            for _ in range(ACCUM):
                strategy.backward(_loss(engine, b) * strategy.accumulation_scale)
                strategy.step()

    return _timed(step, args.steps)


def _rank(rank: int, args, port: int, out: dict) -> None:
    import warnings

    import torch.distributed as dist

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")  # DeepSpeed's old names

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(args.ranks),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    b = _batch(args.tokens)
    times = {"every hook": _deepspeed(args, b, prune=False), "pruned": _deepspeed(args, b, prune=True)}
    dist.barrier()
    if rank == 0:
        out.update(times)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--tokens", type=int, default=180)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    times = {"plain": _plain(args, _batch(args.tokens))}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(args, port, out), nprocs=args.ranks)
        times.update(out)
    sys.path.insert(0, str(Path(__file__).parent))
    from benchhost import describe_host

    lines = [f"## ZeRO-3 engine overhead, outside Ray — {datetime.datetime.now().isoformat(timespec='minutes')}", "",
             f"- Device: {describe_host()}; {args.ranks} gloo rank(s), one thread each",
             f"- Settings: {args.model} fp32, LoRA r 8 on q_proj,v_proj (dropout 0.05), micro-batch {MICRO} × "
             f"{args.tokens} tokens, gradient accumulation {ACCUM}, ZeRO-3 with the frozen base whole; median of "
             f"{args.steps} steps after 1 warm-up step; `plain` ran in the parent process alone",
             f"- Command: `python jobs/bench/engine_overhead.py {' '.join(sys.argv[1:])}`", "",
             "| row | step s (median) | over plain |", "|---|---|---|"]
    lines += [f"| {name} | {t:.2f} | {t / times['plain']:.2f}× |" for name, t in times.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with args.results.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
