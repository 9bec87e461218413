"""Training throughput of distrec's methods against HF Trainer + PEFT LoRA, measured in one run.

    .venv/bin/python jobs/bench/train_throughput.py [--rows lora,cflora,rellax,sft,cft] [--steps 6]
        [--warmup 2] [--rounds 1] [--results jobs/bench/RESULTS.md | --no-append] [key=value ...]

Rows (every ``key=value`` override applies to all of them):

- ``lora``, ``cflora`` (static G), ``rellax`` (SPA + generated CFLoRA from the DIN) on the CTR
  config, each against ``HF Trainer + PEFT LoRA`` run on the same prepared samples (ReLLaX's two
  parts apart: ``cflora-generated``, G from the DIN without SPA, and ``cflora-spa``, SPA with a
  static G);
- ``sft`` and ``cft`` (both branches) on the generative config, against HF Trainer on the same
  generative samples; the CFT row also gives its step time over distrec SFT's. ``cft-stacked``,
  ``cft-grouped``, ``cft-shared`` (``prompt.cf_preamble=same``: the counterfactual prompt keeps
  the factual preamble, so packing computes everything before the history once), the
  ``-grouped`` rows (``train.group_by_length``) and the ``-prefix`` rows (``train.share_prefix``:
  a micro-batch's common prompt prefix runs once) are variants; the ``-regather`` row turns off
  ``deepspeed.gather_once_per_step`` and ``deepspeed.replicate_frozen`` (ZeRO-3 gathers every
  parameter in every micro-batch), the ``-partitioned`` row only ``deepspeed.replicate_frozen``
  (the frozen base is gathered once a step instead of once a run), ``lora-all-hooks`` keeps
  ZeRO-3's hooks on every module (``deepspeed.prune_idle_hooks=false``; by default they stay only
  on the adapters' modules). The ``-zero2`` rows (``lora``, ``sft``, ``cft`` and the two ``-prefix``
  generative rows) run at ZeRO-2 whatever the command line's ``deepspeed.zero_stage``, against an
  HF Trainer row at ZeRO-2 of their own, so that one run compares the two stages on the same rows
  and samples.

distrec rows run the real job (Ray Train, DeepSpeed, same ZeRO stage) for ``warmup + steps``
optimiser steps and read back the per-step TensorBoard scalars; HF rows run
``hf_trainer_baseline.py`` under torchrun with the same world size, micro batch, gradient
accumulation, ZeRO stage and precision. The first ``warmup`` steps are dropped. Figures:
non-padding tokens/s (all ranks, and per rank), samples/s, median step time and its split
(distrec only: data wait / forward+backward / optimiser), peak host RSS of rank 0 (and peak
device memory on GPUs). ``--rounds N`` runs everything N times, the HF rows first in odd rounds
and last in even ones (which also run the distrec rows in reverse order), pools the rounds in the
table and gives every ratio per round as well.
Appends a block to RESULTS.md unless ``--no-append``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name("RESULTS.md")
CTR_CONFIG = "jobs/ml100k_lora.yaml"
GEN_CONFIG = "jobs/ml100k_cft.yaml"
# Small evaluation splits and no generation: the benchmark times training steps only.
COMMON = ["data.valid_size=16", "data.test_size=16", "eval.generate=false", "train.log_every=1",
          "train.checkpoint_every=1000", "train.eval_every=1000"]
ROWS = {  # name: (config, overrides, baseline group)
    "lora": (CTR_CONFIG, [], "ctr"),
    "cflora": (CTR_CONFIG, ["adapter.kind=cflora", "adapter.cflora.mode=static"], "ctr"),
    "rellax": (CTR_CONFIG, ["adapter.kind=cflora", "adapter.cflora.mode=generated", "spa.enabled=true"], "ctr"),
    "cflora-generated": (CTR_CONFIG, ["adapter.kind=cflora", "adapter.cflora.mode=generated"], "ctr"),
    "cflora-spa": (CTR_CONFIG, ["adapter.kind=cflora", "adapter.cflora.mode=static", "spa.enabled=true"], "ctr"),
    "sft": (GEN_CONFIG, ["cft.lam=0"], "gen"),
    "cft": (GEN_CONFIG, [], "gen"),
    "cft-packed": (GEN_CONFIG, ["cft.share_cf_prompt=false"], "gen"),
    "cft-stacked": (GEN_CONFIG, ["cft.share_cf_prompt=false", "cft.pack=false"], "gen"),
    "lora-grouped": (CTR_CONFIG, ["train.group_by_length=true"], "ctr"),
    "sft-grouped": (GEN_CONFIG, ["cft.lam=0", "train.group_by_length=true"], "gen"),
    "cft-grouped": (GEN_CONFIG, ["train.group_by_length=true"], "gen"),
    "cft-shared": (GEN_CONFIG, ["prompt.cf_preamble=same"], "gen"),
    "lora-prefix": (CTR_CONFIG, ["train.share_prefix=true"], "ctr"),
    "sft-prefix": (GEN_CONFIG, ["cft.lam=0", "train.share_prefix=true"], "gen"),
    "cft-prefix": (GEN_CONFIG, ["train.share_prefix=true"], "gen"),
    "lora-grouped-prefix": (CTR_CONFIG, ["train.group_by_length=true", "train.share_prefix=true"], "ctr"),
    "lora-prefix-regather": (CTR_CONFIG, ["train.share_prefix=true", "deepspeed.gather_once_per_step=false",
                                          "deepspeed.replicate_frozen=false"], "ctr"),
    "lora-prefix-partitioned": (CTR_CONFIG, ["train.share_prefix=true", "deepspeed.replicate_frozen=false"], "ctr"),
    "lora-all-hooks": (CTR_CONFIG, ["deepspeed.prune_idle_hooks=false"], "ctr"),
}
ROWS.update({f"{name}-zero2": (ROWS[name][0], ROWS[name][1], f"{ROWS[name][2]}-zero2")
             for name in ("lora", "sft", "cft", "cft-packed", "sft-prefix", "cft-prefix")})
LABELS = {"lora": "distrec LoRA (CTR)", "cflora": "distrec CFLoRA, static G (CTR)",
          "rellax": "distrec ReLLaX: SPA + CFLoRA from DIN (CTR)",
          "cflora-generated": "distrec CFLoRA from DIN, no SPA (CTR)", "cflora-spa": "distrec SPA + CFLoRA, static G (CTR)",
          "sft": "distrec LoRA SFT (generative)",
          "cft": "distrec CFT, counterfactual prompt once (generative)",
          "cft-packed": "distrec CFT, branches packed per instance (generative)", "cft-stacked": "distrec CFT, branches stacked (generative)",
          "lora-grouped": "distrec LoRA, length-grouped (CTR)", "sft-grouped": "distrec LoRA SFT, length-grouped",
          "cft-grouped": "distrec CFT, length-grouped",
          "cft-shared": "distrec CFT, one preamble for both branches",
          "lora-prefix": "distrec LoRA, common prefix once (CTR)", "sft-prefix": "distrec LoRA SFT, common prefix once",
          "cft-prefix": "distrec CFT, common prefixes once",
          "lora-grouped-prefix": "distrec LoRA, length-grouped, common prefix once (CTR)",
          "lora-prefix-regather": "distrec LoRA, common prefix once, ZeRO-3 gathers every micro-batch (CTR)",
          "lora-prefix-partitioned": "distrec LoRA, common prefix once, frozen base partitioned (CTR)",
          "lora-all-hooks": "distrec LoRA, ZeRO-3 hooks on every module (CTR)",
          "lora-zero2": "distrec LoRA, ZeRO-2 (CTR)", "sft-zero2": "distrec LoRA SFT, ZeRO-2",
          "cft-zero2": "distrec CFT, counterfactual prompt once, ZeRO-2",
          "cft-packed-zero2": "distrec CFT, branches packed per instance, ZeRO-2", "sft-prefix-zero2": "distrec LoRA SFT, common prefix once, ZeRO-2",
          "cft-prefix-zero2": "distrec CFT, common prefixes once, ZeRO-2"}

HF_LABELS = {"ctr": "HF Trainer + PEFT LoRA (CTR)", "gen": "HF Trainer + PEFT LoRA (generative)"}
HF_LABELS.update({f"{g}-zero2": f"{label[:-1]}, ZeRO-2)" for g, label in HF_LABELS.items()})
# Overrides a baseline group applies to its distrec rows and to its HF row, after the command line's.
GROUP_OVERRIDES = {g: ["deepspeed.zero_stage=2"] for g in HF_LABELS if g.endswith("-zero2")}
# (row, reference row): the row's step over the reference's, on the same samples.
STEP_PAIRS = (("cft", "sft"), ("cft-packed", "sft"), ("cft-stacked", "sft"), ("cft-grouped", "sft-grouped"), ("cft-shared", "sft"),
              ("cft-prefix", "sft-prefix"), ("cft-prefix", "sft"), ("rellax", "cflora"),
              ("cflora-generated", "cflora"), ("cflora-spa", "cflora"), ("lora-all-hooks", "lora"),
              ("lora", "lora-zero2"), ("sft-prefix", "sft-prefix-zero2"), ("cft-prefix", "cft-prefix-zero2"),
              ("cft-zero2", "sft-zero2"), ("cft-packed-zero2", "sft-zero2"), ("cft-prefix-zero2", "sft-prefix-zero2"))


def _measured(values: list[float], warmup: int) -> list[float]:
    return values[warmup:] if len(values) > warmup else values


def summarise(step_s: list[float], tokens: list[float], samples: list[float], world: int, warmup: int) -> dict:
    """Rates over the steps after ``warmup``: total work / total time (not a mean of rates)."""
    t, k, n = (_measured(v, warmup) for v in (step_s, tokens, samples))
    return {"steps": len(t), "step_s": statistics.median(t), "tokens_per_s": sum(k) / sum(t),
            "tokens_per_s_per_rank": sum(k) / sum(t) / world, "samples_per_s": sum(n) / sum(t),
            "world": world, "measured": {"step_s": t, "tokens": k, "samples": n}}


def pooled(rounds: list[dict]) -> dict:
    """One row's rounds as one: rates and the median step over every round's measured steps;
    the phase split a median of the rounds' medians; peaks the highest; padding the mean; token
    counts summed. A single round is returned as it is."""
    if len(rounds) == 1:
        return rounds[0]
    m = {key: [v for r in rounds for v in r["measured"][key]] for key in ("step_s", "tokens", "samples")}
    out = {**rounds[0], **summarise(m["step_s"], m["tokens"], m["samples"], rounds[0]["world"], 0)}
    for key in ("data_wait_s", "compute_s", "optimizer_s"):
        if key in out:
            out[key] = statistics.median(r[key] for r in rounds)
    for key in ("peak_rss_gib", "peak_device_gib"):
        if key in out:
            out[key] = max(r[key] for r in rounds)
    if "padding" in out:
        out["padding"] = statistics.mean(r["padding"] for r in rounds)
    if "forward_tokens" in out:
        out["forward_tokens"] = sum(r["forward_tokens"] for r in rounds)
    return out


def per_round(rounds: list[tuple[dict, dict]]) -> str:
    """Each round's ratios: distrec rows over their HF baseline (tokens/s), each :data:`STEP_PAIRS` pair (step)."""
    lines = []
    names = list(rounds[0][0])
    for name in names:
        group = ROWS[name][2]
        if group in rounds[0][1]:
            ratios = [_over(res[name]["tokens_per_s"], base[group]["tokens_per_s"]) for res, base in rounds]
            lines.append(f"- {LABELS[name]} over {HF_LABELS[group]}, tokens/s: {', '.join(ratios)}")
    for row, ref in STEP_PAIRS:
        if row in names and ref in names:
            ratios = [_over(res[row]["step_s"], res[ref]["step_s"]) for res, _ in rounds]
            lines.append(f"- {LABELS[row]} step over {LABELS[ref]} step: {', '.join(ratios)}")
    return "\n".join(lines)


def distrec_row(row: str, config: str, overrides: list[str], steps: int, warmup: int, storage: Path,
                profile: bool = False) -> dict:
    from distrec.config import load_job_config
    from distrec.train.launcher import run_job
    from distrec.eval.tensorboard import read_scalars

    name = f"bench-{row}-{time.strftime('%Y%m%d-%H%M%S')}"
    profiled = warmup + steps + 1  # one step after the measured ones: the profiler's overhead stays out of them
    job = load_job_config(config, [*COMMON, *overrides, f"train.max_steps={profiled if profile else warmup + steps}",
                                   f"ray.storage_path={storage}", f"ray.run_name={name}",
                                   *([f"debug.profile_step={profiled}"] if profile else [])])
    run = run_job(job)
    series = {tag: [v for _, v in points][:warmup + steps]  # without the profiled step, if any
              for tag, points in read_scalars(run.run_dir / "tensorboard").items()}
    step_s = series["throughput/step_time_s"]
    tokens = [r * s for r, s in zip(series["throughput/tokens_per_s"], step_s)]
    samples = [r * s for r, s in zip(series["throughput/samples_per_s"], step_s)]
    out = summarise(step_s, tokens, samples, job.ray.num_workers, warmup)
    for phase in ("data_wait", "compute", "optimizer"):
        out[f"{phase}_s"] = statistics.median(_measured(series[f"throughput/{phase}_s"], warmup))
    out["peak_rss_gib"] = max(series["memory/host_peak_rss_gib"])
    out["padding"] = statistics.mean(_measured(series.get("data/padding_fraction", [float("nan")]), warmup))
    out["forward_tokens"] = sum(_measured(series.get("data/forward_tokens", [float("nan")]), warmup))
    if profile:
        out["profile"] = json.loads((run.run_dir / "diagnostics" / f"profile_rank0_step{profiled}.json").read_text())
    if "memory/cuda_max_allocated_gib" in series:
        out["peak_device_gib"] = max(series["memory/cuda_max_allocated_gib"])
    return out


def hf_row(config: str, overrides: list[str], steps: int, warmup: int, workdir: Path, *, group: str,
           profile: bool = False) -> dict:
    from distrec.config import load_job_config
    from distrec.train.artefacts import ensure_prepared

    job = load_job_config(config, [*COMMON, *overrides])
    prepared = ensure_prepared(job)
    out = workdir / f"hf-{group}.json"
    profiled = warmup + steps + 1  # as distrec_row: one step after the measured ones
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={job.ray.num_workers}",
           str(REPO / "jobs" / "bench" / "hf_trainer_baseline.py"), "--config", config, "--prepared", str(prepared),
           "--steps", str(profiled if profile else warmup + steps), "--out", str(out),
           *(["--profile-step", str(profiled)] if profile else []), *COMMON, *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = out.with_suffix(".log")
    with log.open("w") as fh:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"HF Trainer baseline failed ({done.returncode}); last lines of {log}:\n"
                           + "\n".join(log.read_text().splitlines()[-30:]))
    res = json.loads(out.read_text())
    row = summarise(*(res[k][:warmup + steps] for k in ("step_time_s", "tokens", "samples")), res["world_size"], warmup)
    if profile:
        row["profile"] = json.loads(out.with_name(f"{out.stem}_profile_rank0.json").read_text())
    row["peak_rss_gib"] = res["peak_rss_gib"][0]
    if res.get("peak_device_gib") is not None:
        row["peak_device_gib"] = res["peak_device_gib"]
    return row


def hf_baselines(names: list[str], overrides: list[str], args, workdir: Path) -> dict[str, dict]:
    """One HF Trainer row per baseline group of ``names`` (none with ``--no-hf``)."""
    groups = dict.fromkeys(ROWS[n][2] for n in names) if not args.no_hf else ()
    return {g: hf_row(next(ROWS[n][0] for n in names if ROWS[n][2] == g), [*overrides, *GROUP_OVERRIDES.get(g, [])],
                      args.steps, args.warmup, workdir, profile=args.profile, group=g) for g in groups}


def _over(a: float, b: float) -> str:
    return f"{a / b:.2f}×"


def table(results: dict[str, dict], baselines: dict[str, dict]) -> str:
    lines = ["| row | tokens/s (all ranks) | tokens/s per rank | samples/s | step s (median) | data / fwd+bwd / optim s "
             "| padding | peak RSS rank 0 GiB | vs HF Trainer (tokens/s) |", "|---|---|---|---|---|---|---|---|---|"]
    for group in dict.fromkeys(ROWS[name][2] for name in results):
        base = baselines.get(group)
        if base:
            lines.append(f"| {HF_LABELS[group]} "
                         f"| {base['tokens_per_s']:,.0f} | {base['tokens_per_s_per_rank']:,.0f} "
                         f"| {base['samples_per_s']:.2f} | {base['step_s']:.2f} | – | – | {base['peak_rss_gib']:.2f} "
                         f"| 1.00× |")
        for name, r in results.items():
            if ROWS[name][2] != group:
                continue
            split = f"{r['data_wait_s']:.3f} / {r['compute_s']:.2f} / {r['optimizer_s']:.2f}"
            ratio = _over(r["tokens_per_s"], base["tokens_per_s"]) if base else "–"
            lines.append(f"| {LABELS[name]} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_rank']:,.0f} "
                         f"| {r['samples_per_s']:.2f} | {r['step_s']:.2f} | {split} | {r['padding']:.1%} "
                         f"| {r['peak_rss_gib']:.2f} | {ratio} |")
    for row, ref in STEP_PAIRS:
        if row in results and ref in results:
            c, f = results[row], results[ref]
            lines.append(f"\n{LABELS[row]} step / {LABELS[ref]} step (medians, same samples): "
                         f"{_over(c['step_s'], f['step_s'])}; tokens through the model (the first row's over the "
                         f"second's): {_over(c['forward_tokens'], f['forward_tokens'])}")
    profiled = {**{HF_LABELS[g]: b["profile"] for g, b in baselines.items() if "profile" in b},
                **{LABELS[name]: r["profile"] for name, r in results.items() if "profile" in r}}
    if profiled:
        lines.append("\n" + profile_table(profiled))
    return "\n".join(lines)


def profile_table(profiles: dict[str, dict]) -> str:
    """Rank 0's profiled step per row label (``distrec.train.profiling``): seconds per phase and
    collective. HF rows: the backward includes the optimiser (Accelerate steps DeepSpeed there)."""
    kinds = ("all_gather", "reduce_scatter", "all_reduce")
    out = ["| row (rank 0, one step) | step s | forward | backward | optimiser | data wait | host | "
           + " | ".join(f"{k} s (calls; backend threads s)" for k in kinds) + " | recompute | top self-time ops |",
           "|---|---|---|---|---|---|---|" + "---|" * len(kinds) + "---|---|"]
    for name, p in profiles.items():
        ph, coll = p["phases"], p["collectives"]
        cells = [f"{coll[k]['s']:.2f} ({coll[k]['calls']}; backend {coll[k]['backend_s']:.2f})" if k in coll else "0"
                 for k in kinds]
        ops = ", ".join(f"{o['name']} {o['self_cpu_s']:.2f}" for o in p["top_ops"][:6])
        out.append(f"| {name} | {p['step_s']:.2f} | {ph['forward']:.2f} | {ph['backward']:.2f} | "
                   f"{ph['optimizer']:.2f} | {ph['data_wait']:.3f} | {ph['host']:.2f} | " + " | ".join(cells)
                   + f" | {p['recompute_s']:.2f} | {ops} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="lora,cflora,rellax,sft,cft")
    parser.add_argument("--steps", type=int, default=6, help="measured optimiser steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped before measuring")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="profile one extra step after the measured ones, in every row, HF included (torch.profiler, rank 0)")
    parser.add_argument("--no-hf", action="store_true", help="skip the HF Trainer rows (profile or layout runs)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every row this many times, HF rows first in odd rounds and last in even ones, "
                             "distrec rows in reverse order in even rounds, so a drift of the machine's speed "
                             "within the run favours no row; "
                             "the table pools the rounds and each ratio is also given per round")
    args, overrides = parser.parse_known_args(argv)
    names = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {sorted(ROWS)}")

    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.rounds > 1 and args.profile:
        parser.error("--profile profiles one round: leave --rounds at 1")

    started = time.perf_counter()
    rounds: list[tuple[dict, dict]] = []
    with tempfile.TemporaryDirectory(prefix="distrec-bench-") as tmp:
        for r in range(args.rounds):
            work = Path(tmp) / f"round{r + 1}"
            work.mkdir()
            results: dict[str, dict] = {}
            baselines = hf_baselines(names, overrides, args, work) if r % 2 == 0 else {}
            for name in names if r % 2 == 0 else names[::-1]:
                config, extra, group = ROWS[name]
                results[name] = distrec_row(name, config, [*extra, *overrides, *GROUP_OVERRIDES.get(group, [])],
                                            args.steps, args.warmup,
                                            work / "runs", profile=args.profile)
            if r % 2 == 1:
                baselines = hf_baselines(names, overrides, args, work)
            rounds.append((results, baselines))
    results = {name: pooled([res[name] for res, _ in rounds]) for name in names}
    baselines = {g: pooled([base[g] for _, base in rounds]) for g in rounds[0][1]}
    text = table(results, baselines)
    if args.rounds > 1:
        text += ("\n\nPer round (rounds 1, 3, … ran the HF rows first and the distrec rows in the order given; 2, 4, … the distrec rows reversed, then HF):\n\n"
                 + per_round(rounds))
    from distrec.config import load_job_config
    from benchhost import describe_host

    job = load_job_config(ROWS[names[0]][0], [*COMMON, *overrides])  # the settings line: the first row's config
    mixed = (" (the rows labelled ZeRO-2, and their HF row, at ZeRO-2)"
             if any(ROWS[n][2] in GROUP_OVERRIDES for n in names) else "")
    command = " ".join([Path(sys.executable).name, "jobs/bench/train_throughput.py",
                        *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    import torch
    import transformers

    block = (f"\n## Training throughput vs HF Trainer — {datetime.datetime.now().isoformat(timespec='minutes')}\n\n"
             f"- Device: {describe_host()}\n- Versions: torch {torch.__version__}, transformers {transformers.__version__}\n"
             f"- Settings: model {job.model.name_or_path} ({job.model.dtype}), {job.ray.num_workers} ranks, ZeRO-"
             f"{job.deepspeed.zero_stage}{mixed}, {job.deepspeed.precision}, micro batch {job.train.micro_batch_size} × accum "
             f"{job.train.grad_accum}, LoRA r {job.adapter.r} on {','.join(job.adapter.target_modules)}, "
             f"{args.steps} measured steps after {args.warmup} warm-up steps per row"
             f"{f' in each of {args.rounds} rounds (pooled below)' if args.rounds > 1 else ''}; whole benchmark "
             f"{time.perf_counter() - started:.0f} s\n- Command: `{command}`\n\n{text}\n")
    print(block)
    if not args.no_append:
        with args.results.open("a") as fh:
            fh.write(block)
    return {"results": results, "baselines": baselines, "rounds": rounds, "block": block}


if __name__ == "__main__":
    main()
