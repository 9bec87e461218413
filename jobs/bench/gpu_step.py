"""One training step of a Llama backbone with a LoRA/CFLoRA adapter, timed on one device.

What it measures: a single process builds a Llama with random weights from a shape preset
(``--shape 7b``: LLaMA-7B's sizes; ``--shape tiny`` for tests), attaches PEFT LoRA or
distrec's CFLoRA (r=8 on q_proj, v_proj), and trains with AdamW over the adapter only, on
random token ids, using distrec's own objective code (``distrec.objectives.cft``):

- ``--objective sft``: next-token cross-entropy on every token, or only on the last
  ``--target-tokens`` tokens (the LM head runs only there, as in distrec).
- ``--objective cft``: the factual rows plus counterfactual rows that lack the first half of
  the sequence (the "history"); both branches run forward and backward, and the loss is the
  CFT loss (λ = 0.1, linear token weights). These random counterfactual rows share no prompt
  across instances (distrec's default, ``cft.share_cf_prompt``, runs a shared one once per
  micro-batch). ``--cft-layout packed`` (distrec's layout otherwise) runs
  both branches side by side in one row per instance (``objectives.cft.pack_branches``),
  ``stacked`` on top of each other in one left-padded ``[2B, S]`` forward, ``separate`` in two. ``--compare-sft`` also times
  an SFT step on the factual rows, scoring the same target tokens, in the same run (same
  model, adapter and optimiser) and reports the ratio of the step times.

Per setting it reports the median step time, tokens/s (tokens of both branches for CFT),
peak device memory (``torch.cuda.max_memory_allocated``; peak RSS on CPU), the model and
hardware FLOPs of a step (``distrec.train.flops``; hardware adds the forward recomputed by
activation checkpointing and, for the stacked CFT layout, the padded counterfactual
columns; a dense attention kernel also scores the masked-out pairs across the packed
layout's two segments, which it does not count), and MFU against the vendor's dense bf16 peak (known GPUs, bf16 only) and against
an n×n matmul measured in the same run. One machine-readable line per setting is printed,
prefixed ``RESULT `` (JSON); ``--append PATH`` adds a markdown section to PATH.

Run on a GPU (the repository root on PYTHONPATH; torch with CUDA, transformers and peft are
all it needs -- no Ray, DeepSpeed or faiss)::

    python jobs/bench/gpu_step.py --shape 7b --dtype bf16 --device cuda --adapter cflora \\
        --objective cft --compare-sft --attn sdpa --checkpointing on --append jobs/bench/RESULTS.md

Quick CPU check::

    python jobs/bench/gpu_step.py --shape tiny --device cpu --dtype fp32 --steps 2 --warmup 1 --seq 64 --batch 2

It imports ``distrec.train.flops``, ``distrec.objectives.cft`` and, for CFLoRA,
``distrec.model.adapters.cflora``; none of them imports Ray, DeepSpeed, faiss, pandas or
scikit-learn (pyarrow, which the lent GPU machine has, is the only extra).

This is the single-device step only: the ZeRO-2/3 variants (partitioned states, gathered
weights, collectives) need DeepSpeed, which the lent GPU machine does not have; those are
measured through distrec's Ray Train launcher instead.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # runs without PYTHONPATH too
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distrec.eval.environment import cpu_model  # noqa: E402
from distrec.train.flops import device_peak, measure_matmul_peak, mfu, train_step_flops  # noqa: E402

SHAPES = {
    "7b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
           "intermediate_size": 11008, "vocab_size": 32000},
    "smollm2": {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "intermediate_size": 1536, "vocab_size": 49152},  # SmolLM2-135M's shape: the CPU MFU figure
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
             "intermediate_size": 128, "vocab_size": 256},
}
TARGET_MODULES = ["q_proj", "v_proj"]
RANK, ALPHA, DROPOUT = 8, 16, 0.05
PAD_ID = 0
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--seq", type=int, default=1024, help="factual row length (tokens)")
    p.add_argument("--batch", type=int, default=4, help="rows (samples) per step")
    p.add_argument("--attn", choices=["sdpa", "flash_attention_2", "eager"], default="sdpa")
    p.add_argument("--checkpointing", choices=["on", "off"], default="on")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--adapter", choices=["lora", "cflora"], default="cflora")
    p.add_argument("--cflora-mode", choices=["generated", "static"], default="generated")
    p.add_argument("--d-instance", type=int, default=256, help="CFLoRA instance width (CRM hidden size)")
    p.add_argument("--objective", choices=["sft", "cft"], default="sft")
    p.add_argument("--target-tokens", type=int, default=0,
                   help="score only the last K tokens (0: every token; for CFT every counterfactual token)")
    p.add_argument("--cft-layout", choices=["packed", "stacked", "separate"], default="packed")
    p.add_argument("--compare-sft", action="store_true", help="with --objective cft: time an SFT step too")
    p.add_argument("--peak-n", type=int, default=None, help="matmul size for the measured peak (default 8192 cuda, 256 cpu)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--append", type=Path, default=None, help="append a markdown section to this file")
    args = p.parse_args(argv)
    if args.seq < 4 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("need --seq >= 4, --batch >= 1, --steps >= 1, --warmup >= 0")
    limit = cf_len(args.seq) - 1 if args.objective == "cft" else args.seq - 1
    if args.target_tokens < 0 or args.target_tokens > limit:
        p.error(f"--target-tokens must be in [0, {limit}] for --objective {args.objective} at --seq {args.seq}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    return args


def cf_len(seq: int) -> int:
    """Counterfactual row length: the factual row without its first half (the history)."""
    return seq - seq // 2


# ------------------------------------------------------------------------------ model


def model_config(args):
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[args.shape], attn_implementation=args.attn, use_cache=False)


def build(args, device: torch.device):
    """Random-weight Llama on ``device`` in ``--dtype`` with the adapter attached.

    Returns ``(model, adapter or None)``; only the adapter's parameters require grad.
    """
    from transformers import LlamaForCausalLM

    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype directly (no fp32 copy of 7B)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(model_config(args))
    finally:
        torch.set_default_dtype(previous)
    model.to(dtype=dtype)  # no-op unless an init left something in another dtype
    if args.checkpointing == "on":
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    adapter = None
    if args.adapter == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                                                 target_modules=list(TARGET_MODULES), bias="none",
                                                 task_type="CAUSAL_LM"))
    else:
        from distrec.config import AdapterConfig, CFLoraOptions
        from distrec.model.adapters.cflora import CFLoraAdapter

        cfg = AdapterConfig(kind="cflora", r=RANK, alpha=ALPHA, dropout=DROPOUT, target_modules=list(TARGET_MODULES),
                            cflora=CFLoraOptions(mode=args.cflora_mode))
        adapter = CFLoraAdapter(cfg, d_instance=args.d_instance)
        model = adapter.attach(model)
    model.train()
    return model, adapter


def make_batch(args, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random ids; factual rows ``[B, S]`` and counterfactual rows = their second half."""
    g = torch.Generator().manual_seed(args.seed + 1)
    B, S = args.batch, args.seq
    ids = torch.randint(3, vocab, (B, S), generator=g)
    T_cf = cf_len(S)
    if args.target_tokens:
        k = args.target_tokens
    else:
        k = (T_cf if args.objective == "cft" else S) - 1
    labels = torch.full_like(ids, -100)
    labels[:, S - k:] = ids[:, S - k:]
    cf_ids = ids[:, S - T_cf:]
    out = {"f_ids": ids, "f_mask": torch.ones_like(ids), "f_labels": labels,
           "cf_ids": cf_ids, "cf_mask": torch.ones_like(cf_ids), "cf_labels": labels[:, S - T_cf:]}
    out = {key: v.to(device) for key, v in out.items()}
    out["n_keep"] = k
    return out


# ------------------------------------------------------------------------------ a step


def step_fn(model, adapter, batch, objective: str, layout: str, h_u: torch.Tensor | None, optimizer):
    """One optimiser step (forward, backward, AdamW) of ``objective``; returns the loss."""
    from distrec.objectives.cft import DEFAULT_LAMBDA, cft_logits, cft_loss_sums, combine, token_weights

    rows = batch["f_ids"].shape[0]
    if adapter is not None and h_u is not None:
        # the stacked CFT forward has 2B rows: the counterfactual rows reuse the instance vector
        h = torch.cat([h_u, h_u]) if objective == "cft" and layout == "stacked" else h_u
        ctx = adapter.instance(h)
    else:
        ctx = contextlib.nullcontext()
    with ctx:  # forward *and* backward inside: checkpointing re-runs CFLoRA layers in backward
        if objective == "sft":
            z_f, _, y = cft_logits(model, batch["f_ids"], batch["f_mask"], batch["f_labels"])
            sums = cft_loss_sums(z_f, None, y, token_weights(y != -100, rule="uniform"))
            loss = combine(sums, lam=0.0)
        else:
            z_f, z_cf, y = cft_logits(model, batch["f_ids"], batch["f_mask"], batch["f_labels"],
                                      batch["cf_ids"], batch["cf_mask"], PAD_ID, cf_labels=batch["cf_labels"],
                                      stacked=layout != "separate", pack=layout == "packed", cf_grad=True)
            assert z_f.shape[0] == z_cf.shape[0] == rows
            sums = cft_loss_sums(z_f, z_cf, y)
            loss = combine(sums, lam=DEFAULT_LAMBDA)
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak(device: torch.device) -> str:
    """Reset the peak-memory counter; returns what the later reading means."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "max_memory_allocated"
    try:  # Linux: writing 5 resets this process's VmHWM to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return "peak RSS"
    except OSError:
        return "peak RSS since start"


def timed(args, device, model, adapter, batch, objective: str, h_u, optimizer) -> dict:
    for _ in range(args.warmup):
        step_fn(model, adapter, batch, objective, args.cft_layout, h_u, optimizer)
    _sync(device)
    mem_kind = _reset_peak(device)
    times, losses = [], []
    for _ in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        losses.append(step_fn(model, adapter, batch, objective, args.cft_layout, h_u, optimizer))
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _vm_hwm()
    return {"step_times_s": times, "step_time_median_s": statistics.median(times), "loss": losses[-1],
            "peak_mem_bytes": int(peak), "peak_mem_kind": mem_kind}


def step_flops(args, config, objective: str, n_keep: int) -> tuple[dict, float]:
    """``(model-FLOP breakdown, hardware FLOPs)`` of one step of ``objective``."""
    B, S, T_cf = args.batch, args.seq, cf_len(args.seq)
    positions = B * (n_keep + 1)  # logits_to_keep = n_keep + 1 per row (distrec's response_logits)
    generated = args.adapter == "cflora" and args.cflora_mode == "generated"
    common = {"adapter_rank": RANK, "adapted_modules": TARGET_MODULES, "logit_positions": positions,
              "activation_checkpointing": args.checkpointing == "on", "cflora": args.adapter == "cflora",
              "cflora_d_instance": args.d_instance if generated else None}
    if objective == "sft":
        f = train_step_flops(config, B * S, S, **common)
        return f.as_dict(), f.hardware_flops
    f = train_step_flops(config, B * S, S, cft=True, cft_tokens=B * T_cf, cft_seq_len=T_cf,
                         cft_logit_positions=positions, **common)
    hw = f.hardware_flops
    if args.cft_layout == "stacked":  # counterfactual rows are left-padded to S and computed in full
        hw = train_step_flops(config, B * S, S, cft=True, cft_tokens=B * S, cft_seq_len=S,
                              cft_logit_positions=positions, **common).hardware_flops
    return f.as_dict(), hw


# ---------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{cpu_model()}, {os.cpu_count()} cores, no GPU used"


def versions() -> str:
    import transformers

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    try:
        import peft

        parts.append(f"peft {peft.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


HEADER = ("| objective | adapter | layout | rows × seq | tokens/step | step s (median) | tokens/s | samples/s "
          "| peak mem GiB | model TFLOP/step | hw TFLOP/step | MFU (vendor bf16) | MFU (measured matmul) "
          "| HFU (measured matmul) | step vs SFT |")
SEPARATOR = "|" + "---|" * 15


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table_row(r: dict) -> str:
    layout = r["cft_layout"] if r["objective"] == "cft" else "-"
    rows = f"{r['batch']} × {r['seq']}" + (f" + {r['batch']} × {r['cf_seq']}" if r["objective"] == "cft" else "")
    vs = f"{r['vs_sft_step_time']:.2f}×" if r.get("vs_sft_step_time") else ""
    return (f"| {r['objective']} | {r['adapter']} | {layout} | {rows} | {r['tokens_per_step']:,} "
            f"| {r['step_time_median_s']:.4g} | {r['tokens_per_s']:,.1f} | {r['samples_per_s']:.3g} "
            f"| {r['peak_mem_bytes'] / 2**30:.2f} | {r['model_flops'] / 1e12:.4g} | {r['hardware_flops'] / 1e12:.4g} "
            f"| {_pct(r['mfu_vendor'])} | {_pct(r['mfu_measured'])} | {_pct(r['hfu_measured'])} | {vs} |")


def section(args, results: list[dict], dev: str, vendor: float | None, measured: float, command: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M")
    shape = SHAPES[args.shape]
    adapter = f"{args.adapter} r={RANK} α={ALPHA} dropout={DROPOUT} on {','.join(TARGET_MODULES)}"
    if args.adapter == "cflora":
        adapter += f", mode {args.cflora_mode}" + (f", d_instance {args.d_instance}" if args.cflora_mode == "generated" else "")
    lines = [
        "",
        f"## Single-device step ({args.shape}, {args.adapter}, {args.objective}) — {stamp}",
        "",
        f"- Device: {dev}",
        f"- Versions: {versions()}",
        f"- Settings: shape {args.shape} ({', '.join(f'{k} {v}' for k, v in shape.items())}), dtype {args.dtype}, "
        f"attn {args.attn}, checkpointing {args.checkpointing}, batch {args.batch}, seq {args.seq}, "
        f"target tokens {args.target_tokens or 'all'}, adapter {adapter}, objective {args.objective}"
        + (f" (layout {args.cft_layout}, history = first {args.seq // 2} tokens)" if args.objective == "cft" else "")
        + f", AdamW lr {args.lr} over adapter params, {args.warmup} warm-up + {args.steps} timed steps, seed {args.seed}",
        (f"- Peaks: vendor dense bf16 {'n/a' if vendor is None else f'{vendor / 1e12:.0f} TFLOP/s'}; "
         f"measured {args.peak_n}×{args.peak_n} {args.dtype} matmul {measured / 1e12:.4g} TFLOP/s"),
        ("- FLOPs: distrec.train.flops (frozen base: 4N per token + attention + adapter; hardware adds the "
         "checkpointing recompute and, stacked CFT, the padded counterfactual columns)"),
        f"- Command: `{command}`",
        "",
        HEADER,
        SEPARATOR,
        *[table_row(r) for r in results],
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.peak_n is None:
        args.peak_n = 8192 if device.type == "cuda" else 256
    command = "python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    config = model_config(args)
    model, adapter = build(args, device)
    batch = make_batch(args, config.vocab_size, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    h_u = None
    if adapter is not None and args.cflora_mode == "generated":
        h_u = torch.randn(args.batch, args.d_instance, generator=torch.Generator().manual_seed(args.seed + 2)).to(device)

    objectives = ["sft", "cft"] if args.objective == "cft" and args.compare_sft else [args.objective]
    measured = measure_matmul_peak(device, dtype, n=args.peak_n)
    dev = device_name(device)
    vendor = device_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" and args.dtype == "bf16" else None

    results = []
    for objective in objectives:
        timing = timed(args, device, model, adapter, batch, objective, h_u, optimizer)
        flops, hw = step_flops(args, config, objective, batch["n_keep"])
        B, S, T_cf = args.batch, args.seq, cf_len(args.seq)
        tokens = B * S + (B * T_cf if objective == "cft" else 0)
        t = timing["step_time_median_s"]
        r = {
            "objective": objective, "adapter": args.adapter, "cflora_mode": args.cflora_mode, "shape": args.shape,
            "dtype": args.dtype, "device": dev, "attn": args.attn, "checkpointing": args.checkpointing,
            "batch": B, "seq": S, "cf_seq": T_cf if objective == "cft" else None, "cft_layout": args.cft_layout,
            "n_keep": batch["n_keep"], "trainable_params": sum(p.numel() for p in trainable),
            "tokens_per_step": tokens, **timing,
            "tokens_per_s": tokens / t, "samples_per_s": B / t,
            "model_flops": flops["model_flops"], "hardware_flops": hw, "flops": flops,
            "vendor_peak_flops": vendor, "measured_peak_flops": measured,
            "mfu_vendor": mfu(flops["model_flops"], t, vendor) if vendor else None,
            "mfu_measured": mfu(flops["model_flops"], t, measured),
            "hfu_measured": mfu(hw, t, measured),
        }
        results.append(r)
    if len(results) == 2:
        sft, cft = results
        cft["vs_sft_step_time"] = cft["step_time_median_s"] / sft["step_time_median_s"]
        cft["vs_sft_model_flops"] = cft["model_flops"] / sft["model_flops"]

    print(HEADER)
    print(SEPARATOR)
    for r in results:
        print(table_row(r))
    for r in results:
        print("RESULT " + json.dumps(r, sort_keys=True))
    if args.append is not None:
        args.append.parent.mkdir(parents=True, exist_ok=True)
        with args.append.open("a") as fh:
            fh.write(section(args, results, dev, vendor, measured, command))
        print(f"appended to {args.append}")
    return results


if __name__ == "__main__":
    main()
