"""The training loop run by every Ray Train worker, for every model: one readable function, top to bottom.

build (``train.builders``: the model of ``model.kind`` and its task) -> DeepSpeed engine ->
restore checkpoint -> for each step: this rank's micro-batches, global loss normalisers,
backward, step -> log, validate (early stop on ``train.patience``), checkpoint -> select the
best validation state -> export (adapter, DIN folder) -> test predictions.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from distrec.config import JobConfig, job_config_from_dict
from distrec.storage_uri import Staging, locate
from distrec.train import faults, profiling
from distrec.train.checkpoint import SELECTED, TrainState, load_selected, restore, save_and_report, save_selected
from distrec.train.data_stream import eval_batches, n_rows, padding_counts, train_micro_batches
from distrec.train.row_source import ShardRows
from distrec.train.monitor import peak_memory_bytes
from distrec.train.step_timer import StepTimer
from distrec.train.strategy import steps_per_epoch


def train_worker(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` for Ray Train. ``loop_config``: job (dict), run (a
    :class:`~distrec.storage_uri.Location`), mode, splits, prepared_dir, crm_dir.

    Every rank writes into a :class:`~distrec.storage_uri.Staging` folder (the run folder itself
    on local disk); off local disk rank 0 uploads TensorBoard events while training and all
    outputs at the end, ``metrics_<mode>.json`` last."""
    with Staging(loop_config["run"]) as staging:
        _train_worker(loop_config, staging)


def _train_worker(loop_config: dict[str, Any], staging: Staging) -> None:
    import ray.train

    from distrec.train.builders import build
    from distrec.train.monitor import Monitor
    from distrec.train.strategy import DeepSpeedStrategy

    job = job_config_from_dict(loop_config["job"])
    run_dir = staging.local
    mode = loop_config.get("mode", "train")
    strategy = DeepSpeedStrategy(job.deepspeed, job.train, job.ray.use_gpu)
    torch.manual_seed(job.train.seed)  # identical initialisation of the trained parameters on every rank
    built = build(job, strategy, loop_config)
    model, task = built.model, built.task

    # This rank's view of each split: the row shards, read a record batch at a time (train.row_source).
    splits = {name: ShardRows(loop_config["token_files"][name]) for name in loop_config["splits"]}
    train_rows = splits.get("train")
    t = job.train
    per_epoch = steps_per_epoch(n_rows(train_rows), strategy.world_size, t.micro_batch_size, t.grad_accum) if train_rows else 0
    total_steps = per_epoch * t.epochs if t.max_steps is None else min(t.max_steps, per_epoch * t.epochs)
    engine = strategy.initialize(model, max(total_steps, 1))
    _write_partition_report(strategy, engine.module, run_dir / "diagnostics")
    staging.push("diagnostics")
    monitor = Monitor(run_dir / "tensorboard", enabled=strategy.is_rank0,
                      upload=(lambda: staging.push("tensorboard")) if staging.remote else None,
                      upload_every_s=job.ray.upload_every_s)
    ctx = _Context(job, strategy, engine, task, monitor, run_dir)
    if mode == "train" and built.flop_config is not None:
        from distrec.train.flops import StepFlopCounter, peak_flops

        try:
            ctx.flops, ctx.peak = StepFlopCounter(built.flop_config, job), peak_flops(strategy.device)
        except (AttributeError, ValueError) as exc:  # not a Llama-style decoder: no MFU, training goes on
            monitor.text("events/mfu", 0, f"no FLOP count for this backbone: {exc}")

    state, best = TrainState(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state, best = restore(strategy, checkpoint, getattr(task, "generators", None))
        monitor.text("events/resume", state.step, f"resumed at step {state.step} (epoch {state.epoch})")

    if mode == "eval":
        staging.pull(SELECTED)
        _assign(strategy, model, load_selected(model, run_dir))
    if mode == "train":
        if per_epoch == 0:
            from distrec.errors import DataError

            raise DataError(
                f"train split has {n_rows(train_rows)} rows: fewer than one step of "
                f"{strategy.world_size} ranks x {t.micro_batch_size} x {t.grad_accum}"
            )
        if strategy.is_rank0 and state.step == 0 and built.log_samples is not None:
            built.log_samples(monitor, train_rows)
        best = _train(ctx, state, train_rows, splits.get("valid"), per_epoch, total_steps, best)
        if not state.finished(total_steps):  # paused by train.stop_at_step
            monitor.close()
            _record_memory(run_dir, strategy.rank, f"paused_at_{state.step}")
            staging.push("diagnostics")
            return
        if best is not None:
            _assign(strategy, model, best)
        save_selected(best if best is not None else _snapshot(ctx), run_dir, strategy.is_rank0)
        started = time.perf_counter()
        built.export(run_dir)
        monitor.scalars(state.step, {"time/export_s": time.perf_counter() - started})  # gathers under ZeRO-3
    unchanged = mode == "train" and ctx.valid_predictions is not None and ctx.valid_predictions[0] == state.step \
        and (best is None or state.best_step == state.step)  # the weights now are those last validated
    results = {name: _evaluate(ctx, rows, name, write=True, reuse=unchanged and name == "valid")
               for name, rows in splits.items() if name != "train"}
    if "test" in splits and built.test_extras is not None:
        results["test"].update(built.test_extras(ctx, splits["test"], Path(loop_config["prepared_dir"])))
    if mode == "train":
        results["train"] = {"steps": state.step, "best_step": state.best_step, "stopped_early": int(state.stopped_early),
                            "samples": n_rows(train_rows)}
    if strategy.is_rank0:
        from distrec.eval.environment import run_environment

        environment = run_environment(loop_config["job"])  # host, threads, library versions, config hash
        monitor.hparams({**_hparams(job), "config_hash": environment["config_hash"]},
                        {f"hparam/{s}_{k}": v for s, m in results.items() for k, v in m.items()})
    monitor.close()
    _record_memory(run_dir, strategy.rank, mode)
    staging.push("diagnostics")
    marker = f"metrics_{mode}.json"  # written and published last: its presence means "finished"
    if strategy.is_rank0:
        locate(run_dir / marker).write_text(json.dumps({**results, "environment": environment}, indent=2))
    staging.publish(marker)
    final = {f"{s}/{k}": v for s, m in results.items() for k, v in m.items()}
    ray.train.report({**final, "step": state.step})


class _Context:
    """What the helpers below share; built once per worker."""

    def __init__(self, job: JobConfig, strategy, engine, task, monitor, run_dir: Path):
        self.job, self.strategy, self.engine, self.task = job, strategy, engine, task
        self.monitor, self.run_dir = monitor, run_dir
        self.flops, self.peak = None, None  # train.flops: model FLOPs per micro-batch, FLOP/s per rank
        self.valid_predictions = None  # (step, rank 0's gathered table or None) of the last validation
        self.hooks = faults.Hooks(job.debug, run_dir, strategy.rank, strategy.world_size)


def _train(ctx: _Context, state: TrainState, rows, valid_rows, per_epoch: int, total_steps: int, best_state=None):
    """Run optimiser steps until ``total_steps``; returns the best validation adapter state or None.

    ``best_state``: the best state restored with the checkpoint (validations before a resume count)."""
    strategy, task, t = ctx.strategy, ctx.task, ctx.job.train
    eval_every = t.eval_every or per_epoch
    ckpt_every = t.checkpoint_every or per_epoch
    ctx.engine.train()
    saved_step = state.step  # the checkpoint this attempt resumed from (0: none)
    lengths = rows.lengths("input_ids") if t.group_by_length else None
    while not state.finished(total_steps):
        stream = train_micro_batches(
            rows, strategy.rank, strategy.world_size, t.micro_batch_size, t.grad_accum,
            t.seed, state.epoch, state.step_in_epoch, lengths=lengths, group_steps=t.group_steps,
        )
        timer = StepTimer(strategy.device)
        for micro_batches in stream:
            timer.start_step()
            started = time.perf_counter()
            # Global loss normalisers of this step (all micro-batches, all ranks) before any forward.
            norms = strategy.all_reduce_sums(task.normalisers(micro_batches))
            stats: dict[str, float] = {}
            tokens, forward_tokens, flops = 0, 0, 0.0  # forward_tokens: with CFT's counterfactual rows
            padded, slots = padding_counts(micro_batches)
            profile_path = ctx.run_dir / "diagnostics" / f"profile_rank{strategy.rank}_step{state.step + 1}.json"
            with profiling.profiled(profile_path, ctx.job.debug.profile_step == state.step + 1, timer), \
                    strategy.accumulation_window():
                for mb in micro_batches:
                    with timer.phase("compute"), task.context(mb):
                        with profiling.phase("forward"):
                            loss, mb_stats = task.micro_loss(ctx.engine, mb, norms)
                        with profiling.phase("backward"):
                            strategy.backward(loss * strategy.accumulation_scale)
                    with timer.phase("optimizer"), profiling.phase("optimizer"):
                        strategy.step()
                    through = mb_stats.pop("forward_tokens", None)  # a task that shares tokens says how many ran
                    for k, v in mb_stats.items():
                        stats[k] = stats.get(k, 0.0) + v
                    tokens += int(sum(len(s) for s in mb["input_ids"])) if "input_ids" in mb else 0
                    forward_tokens += through if through is not None else sum(
                        len(s) for key in mb if key.endswith("input_ids") for s in mb[key])
                    flops += ctx.flops.micro_batch(mb) if ctx.flops else 0.0
            samples = sum(len(mb["sample_id"]) for mb in micro_batches)
            state.step += 1
            state.step_in_epoch += 1
            ctx.hooks.after_step(state.step, state.epoch, state.step_in_epoch,
                                 (int(i) for mb in micro_batches for i in mb["sample_id"]), saved_step)
            elapsed = time.perf_counter() - started
            if state.step % t.log_every == 0 or state.step == total_steps:
                # one collective for the step's sums (prefixed so they cannot clash with a task's names)
                sums = strategy.all_reduce_sums({**{f"task.{k}": v for k, v in stats.items()}, "tokens": tokens,
                                                 "forward_tokens": forward_tokens, "samples": samples, "flops": flops,
                                                 "padded": padded, "slots": slots})
                global_stats = {k.removeprefix("task."): v for k, v in sums.items() if k.startswith("task.")}
                global_tokens, global_samples, global_flops = sums["tokens"], sums["samples"], sums["flops"]
                global_padding = sums["padded"] / max(sums["slots"], 1.0)
                ctx.monitor.scalars(state.step, {
                    **task.step_loss(global_stats, norms),
                    "train/lr": strategy.lr(),
                    "train/grad_norm": strategy.grad_norm(),
                    "train/epoch": state.epoch + state.step_in_epoch / per_epoch,
                    **({"throughput/tokens_per_s": global_tokens / elapsed} if global_tokens else {}),
                    "throughput/samples_per_s": global_samples / elapsed,
                    "throughput/step_time_s": elapsed,
                    **({"data/padding_fraction": global_padding, "data/forward_tokens": sums["forward_tokens"]}
                       if global_tokens else {}),
                    **({"throughput/model_tflops_per_s": global_flops / elapsed / 1e12} if ctx.flops else {}),
                    **({"throughput/mfu": global_flops / elapsed / (ctx.peak * strategy.world_size)}
                       if ctx.flops and ctx.peak else {}),
                    **timer.scalars(),
                    **{f"memory/{k}": v for k, v in _peak_memory().items()},
                })
            last = state.step >= total_steps
            if valid_rows is not None and (state.step % eval_every == 0 or last):
                metrics = _evaluate(ctx, valid_rows, "valid", write=False, step=state.step)
                ctx.engine.train()
                name, higher_is_better = task.selection
                score = metrics.get(name, float("nan"))
                sign = 1.0 if higher_is_better else -1.0
                if not math.isnan(score) and (state.best_metric is None or sign * score > sign * state.best_metric):
                    state.best_metric, state.best_step, state.stale_evals = score, state.step, 0
                    best_state = _snapshot(ctx)
                else:
                    state.stale_evals += 1
                if t.patience is not None and state.stale_evals >= t.patience and not last:
                    state.stopped_early = True  # identical on every rank: the metrics are
                    ctx.monitor.text("events/early_stop", state.step,
                                     f"stopped at step {state.step}: {state.stale_evals} validations without a "
                                     f"better {name} than {state.best_metric} (step {state.best_step})")
                    last = True
            paused = t.stop_at_step is not None and state.step == t.stop_at_step and not last
            if state.step % ckpt_every == 0 or last or paused:
                ctx.monitor.sync()  # events up to this step reach storage before the checkpoint counts
                upload = ctx.hooks.checkpoint_upload(state.step, saved_step)
                save_and_report(strategy, state, {"step": state.step, "epoch": state.epoch}, best_state, upload,
                                getattr(task, "generators", None))
                saved_step = state.step
            if last or paused:
                return best_state
            timer.step_done()
        state.epoch += 1
        state.step_in_epoch = 0
    return best_state


@torch.no_grad()
def _evaluate(ctx: _Context, rows, split: str, write: bool, step: int | None = None, reuse: bool = False) -> dict:
    """Predictions for every row of a split (all ranks forward equally); the same metrics on every rank.

    Each rank streams its rows from the shards and keeps only its predictions, packed batch by
    batch into typed columns (``task.eval_columns``: 21 bytes a CTR row). Rank 0 gathers them,
    computes the metrics (AUC needs every score), writes the predictions file, and broadcasts the
    metrics, or the error they raised, so decisions taken on them (the best state) are identical
    everywhere and no rank is left waiting in a collective. The valid split's gathered table is
    kept (``ctx.valid_predictions``); ``reuse`` (the same on every rank, and only when the weights
    have not changed since) takes it instead of a second forward over the same rows.
    """
    from distrec.objectives.tasks import pack_rows

    strategy, task = ctx.strategy, ctx.task
    ctx.engine.eval()
    limit = ctx.job.eval.max_samples if split == "valid" else None
    if limit is not None:
        rows = rows.head(limit)
    started = time.perf_counter()
    if reuse:
        gathered = ctx.valid_predictions[1]
    else:
        parts = [pack_rows([], task.eval_columns)]
        batches = eval_batches(rows, strategy.rank, strategy.world_size, ctx.job.eval.batch_size)
        n_batches = -(-n_rows(rows) // (strategy.world_size * ctx.job.eval.batch_size))
        for batch, n_real in tqdm(batches, total=n_batches, desc=f"eval {split}", disable=not strategy.is_rank0,
                                  mininterval=10):
            parts.append(pack_rows(task.eval_rows(ctx.engine, batch, n_real), task.eval_columns))
        gathered = strategy.gather_to_rank0(np.concatenate(parts))
        del parts
        if split == "valid":
            ctx.valid_predictions = (step, gathered)
    outcome = None
    if strategy.is_rank0:
        try:
            outcome = (_rank0_metrics(ctx, np.concatenate(gathered), split, write, step), None)
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            outcome = (None, exc)
    del gathered
    metrics, error = strategy.broadcast_from_rank0(outcome)
    if error is not None:
        raise error
    scalars = {f"eval/{split}_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    if not reuse:
        scalars[f"throughput/eval_{split}_rows_per_s"] = n_rows(rows) / max(time.perf_counter() - started, 1e-9)
    ctx.monitor.scalars(step if step is not None else 0, scalars)
    return metrics


def _rank0_metrics(ctx: _Context, table: np.ndarray, split: str, write: bool, step: int | None) -> dict:
    """Metrics of the gathered predictions (deduplicated and sorted by sample id); with ``write``
    also the predictions file and, for P(yes) scores, the metrics' intervals."""
    _, first = np.unique(table["sample_id"], return_index=True)
    table = table[first]
    columns = {name: np.ascontiguousarray(table[name]) for name in table.dtype.names}
    metrics, columns = ctx.task.metrics(columns, split=split, step=step)
    if write and columns:
        _write_predictions(ctx.run_dir / f"predictions_{split}.parquet", columns)
        if "p_yes" in columns:
            from distrec.eval.intervals import ctr_intervals

            metrics.update(ctr_intervals(columns["label"], columns["p_yes"], columns["user_id"]))
    return metrics


def _write_predictions(path: Path, columns: dict[str, np.ndarray] | Any) -> None:
    """``columns``: a dict of arrays or a ``pyarrow.Table`` (kept with its schema metadata)."""
    import pyarrow as pa

    from distrec.data.storage import write_parquet_file

    write_parquet_file(columns if isinstance(columns, pa.Table) else pa.table(columns), path)


def _snapshot(ctx: _Context) -> dict[str, torch.Tensor]:
    """Copy of the trainable (adapter) parameters, gathered whole on every rank."""
    params = {n: p for n, p in ctx.engine.module.named_parameters() if p.requires_grad}
    with ctx.strategy.gathered(params.values()):
        return {n: p.detach().clone() for n, p in params.items()}


def _assign(strategy, model, tensors: dict[str, torch.Tensor]) -> None:
    """Write a snapshot back into (possibly partitioned) trainable parameters."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with strategy.gathered(params.values(), modifier_rank=0):
        for name, p in params.items():
            p.data.copy_(tensors[name])


def _write_partition_report(strategy, module, folder: Path) -> None:
    """Per rank and parameter: [elements held here, full size, dtype] (ZeRO-3 partitioning and precision
    evidence); ``replicated`` names the frozen ones every rank holds whole (``deepspeed.replicate_frozen``),
    ``hooked`` the modules that keep ZeRO-3's hooks (``deepspeed.prune_idle_hooks``)."""
    buffers = dict(module.named_buffers(remove_duplicate=False))
    held = {**dict(module.named_parameters()), **{name: buffers[name] for name in strategy.replicated}}
    rows = {name: [*strategy.local_numel(t), str(t.dtype).removeprefix("torch.")] for name, t in held.items()}
    folder.mkdir(parents=True, exist_ok=True)
    report = {"rank": strategy.rank, "world_size": strategy.world_size, "params": rows, "replicated": strategy.replicated,
              "hooked": strategy.hooked}
    (folder / f"partition_rank{strategy.rank}.json").write_text(json.dumps(report))


def _record_memory(run_dir: Path, rank: int, tag: str) -> None:
    """This rank's peak memory so far (bytes) in ``diagnostics/memory_rank<r>_<tag>.json``."""
    (run_dir / "diagnostics" / f"memory_rank{rank}_{tag}.json").write_text(json.dumps(peak_memory_bytes()))


def _peak_memory() -> dict[str, float]:
    return {f"{k}_gib": v / 2**30 for k, v in peak_memory_bytes().items()}


def _hparams(job: JobConfig) -> dict[str, Any]:
    from distrec.config_loader import to_dict

    d = to_dict(job)
    return {f"{section}.{k}": v for section, values in d.items() for k, v in values.items() if not isinstance(v, (dict, list))}
