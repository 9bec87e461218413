"""The baseline of train_throughput.py: HF ``transformers.Trainer`` + PEFT LoRA under DeepSpeed.

This is the path LLaMA-Factory users take. One process per rank, started by torchrun (gloo on
CPU, NCCL on GPUs)::

    torchrun --nproc_per_node 2 jobs/bench/hf_trainer_baseline.py \\
        --config jobs/ml100k_lora.yaml --prepared DIR --steps 8 --out base.json [key=value ...]

It matches the distrec job: same model and dtype, same samples tokenised by distrec's own
tokeniser (CTR: prompt + answer token; generative: prompt + target title), same LoRA, micro
batch, gradient accumulation, world size, ZeRO stage and precision. The loss is HF's causal-LM
cross entropy over the answer tokens (labels -100 elsewhere), computed from full-vocabulary
logits at every position, as the Trainer does by default.

Rank 0 writes ``--out``: per optimiser step, the wall time (``on_step_begin`` to
``on_step_end``), the non-padding tokens and samples of all ranks, and each rank's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def tokenised_train_rows(job, prepared: Path) -> tuple[list[list[int]], list[list[int]]]:
    """``(input_ids, labels)`` of the train split, tokenised exactly as distrec's Ray Data actors do."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distrec.config_loader import to_dict
    from distrec.train.data_stream import TokenizeActor

    files = sorted((prepared / "train").glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(f).append_column("path", pa.array([str(f)] * pq.read_metadata(f).num_rows))
                              for f in files])
    out = TokenizeActor(to_dict(job), str(prepared))(table)
    inputs = [list(map(int, ids)) for ids in out["input_ids"]]
    if job.data.task == "ctr":  # the answer token is the last one
        labels = [[-100] * (len(ids) - 1) + [ids[-1]] for ids in inputs]
    else:
        labels = [list(map(int, lab)) for lab in out["labels"]]
    return inputs, labels


class CountingCollator:
    """Right-pads a micro-batch and records its non-padding token and sample counts, in order."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.tokens: list[int] = []
        self.samples: list[int] = []

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        self.tokens.append(int(mask.sum()))
        self.samples.append(len(features))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _profiled_classes():
    """A Trainer whose forward and backward sit in the profiler ranges distrec's loop uses, and the
    callback that profiles one optimiser step (``distrec.train.profiling``), so the HF row's
    breakdown reads like distrec's. Accelerate's DeepSpeed ``backward`` also runs the engine's
    ``step()``: the HF backward includes the optimiser."""
    from contextlib import ExitStack

    from transformers import Trainer, TrainerCallback

    from distrec.train.profiling import phase, profiled

    class ProfiledTrainer(Trainer):
        def compute_loss(self, *args, **kwargs):
            with phase("forward"):
                return super().compute_loss(*args, **kwargs)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            backward = self.accelerator.backward

            def in_phase(loss, **kw):
                with phase("backward"):
                    return backward(loss, **kw)

            self.accelerator.backward = in_phase

    class NoDataWait:
        seconds: dict = {}

    class StepProfile(TrainerCallback):
        def __init__(self, step: int, path: Path) -> None:
            self.step, self.path, self.stack = step, path, ExitStack()

        def on_step_begin(self, _args, state, *_, **__):
            if state.global_step + 1 == self.step:
                self.stack.enter_context(profiled(self.path, True, NoDataWait()))

        def on_step_end(self, *_, **__):
            self.stack.close()

    return ProfiledTrainer, StepProfile


def main(argv: list[str]) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback, TrainingArguments

    from distrec.config import load_job_config
    from distrec.model.backbone import build_model, load_tokenizer
    from distrec.train.monitor import peak_memory_bytes
    from distrec.train.strategy import build_ds_config, disable_cpu_shm_allreduce_build

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--prepared", required=True, type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--profile-step", type=int, default=0,
                        help="profile this optimiser step (1-based) with distrec.train.profiling; 0: none")
    args, overrides = parser.parse_known_args(argv)
    job = load_job_config(args.config, overrides)

    import deepspeed

    disable_cpu_shm_allreduce_build()
    use_gpu = torch.cuda.is_available() and job.ray.use_gpu
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    world = dist.get_world_size()
    t = job.train
    ds_config = build_ds_config(job.deepspeed, t, world)
    targs = TrainingArguments(
        output_dir=str(args.out.parent / "hf_trainer_out"), per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum, max_steps=args.steps, learning_rate=t.lr,
        weight_decay=t.weight_decay, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=job.deepspeed.gradient_clipping,
        logging_strategy="no", save_strategy="no", report_to=[], deepspeed=ds_config, seed=t.seed,
        bf16=job.deepspeed.precision == "bf16", use_cpu=not use_gpu, dataloader_num_workers=0,
        gradient_checkpointing=job.model.gradient_checkpointing, remove_unused_columns=False,
        ddp_backend=None if use_gpu else "gloo",
    )  # created before the model: it turns on zero.Init for from_pretrained under ZeRO-3
    tokenizer = load_tokenizer(job.model)
    model = build_model(job.model)
    model = get_peft_model(model, LoraConfig(r=job.adapter.r, lora_alpha=job.adapter.alpha, lora_dropout=job.adapter.dropout,
                                             target_modules=list(job.adapter.target_modules), task_type="CAUSAL_LM"))
    inputs, labels = tokenised_train_rows(job, args.prepared)
    dataset = [{"input_ids": i, "labels": lab} for i, lab in zip(inputs, labels)]
    collator = CountingCollator(tokenizer.pad_token_id)
    ProfiledTrainer, StepProfile = _profiled_classes()

    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.started)

    trainer = ProfiledTrainer(model=model, args=targs, train_dataset=dataset, data_collator=collator,
                              callbacks=[StepTimes()])
    profile_path = args.out.with_name(f"{args.out.stem}_profile_rank{dist.get_rank()}.json")
    trainer.add_callback(StepProfile(args.profile_step, profile_path))
    trainer.train()

    accum = t.grad_accum
    per_step = [(sum(collator.tokens[s * accum:(s + 1) * accum]), sum(collator.samples[s * accum:(s + 1) * accum]))
                for s in range(len(times))]
    local = torch.tensor(per_step, dtype=torch.float64)
    dist.all_reduce(local)
    peak = peak_memory_bytes()
    rss = torch.tensor([peak["host_peak_rss"] / 2**30], dtype=torch.float64)
    all_rss = [torch.zeros_like(rss) for _ in range(world)]
    dist.all_gather(all_rss, rss)
    if dist.get_rank() == 0:
        args.out.write_text(json.dumps({
            "step_time_s": times, "tokens": local[:, 0].tolist(), "samples": local[:, 1].tolist(),
            "peak_rss_gib": [float(r) for r in all_rss], "world_size": world,
            "peak_device_gib": peak["cuda_max_allocated"] / 2**30 if "cuda_max_allocated" in peak else None,
        }))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1:])
