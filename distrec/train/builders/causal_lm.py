"""The causal LM in the one loop: backbone built under ZeRO-3 partitioned init, SPA tokens,
the adapter (LoRA / CFLoRA), ReLLaX assembly with the frozen CRM, and the CTR or generative task;
exports the adapter (and SPA's projector)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distrec.train.builders import Built


def make_task(job, tokenizer, device: torch.device, conditioning=None):
    """The task object (``objectives.tasks``) for ``job.data.task``; ``conditioning``: CRM inputs (ReLLaX)."""
    from distrec.data.tokenize import ctr_label_ids
    from distrec.objectives.tasks import Batchify, CtrTask, GenerativeTask

    batchify = Batchify(tokenizer.pad_token_id, device)
    if job.data.task == "ctr":
        return CtrTask(*ctr_label_ids(tokenizer, job.prompt), batchify, conditioning, job.train.share_prefix)
    return GenerativeTask(job.cft, batchify, job.train.share_prefix, job.shares_cf_prompt)


@dataclass
class CausalLM:
    """One build of the causal LM: ``llm`` carries the adapter; ``model`` is what runs (``llm``,
    or SPA's wrapper around it); ``task``: its task object (:func:`make_task`, with the CRM inputs
    of ReLLaX when it has them)."""

    tokenizer: Any
    llm: torch.nn.Module
    adapter: Any
    model: torch.nn.Module
    task: Any
    backbone_config: Any


def assemble_causal_lm(job, device: torch.device, crm_dir, init_context=contextlib.nullcontext) -> CausalLM:
    """Backbone (built inside ``init_context()``, e.g. ZeRO-3's partitioned init), trunk attention
    when a prefix runs once (``train.share_prefix``, ``cft.share_cf_prompt``), SPA tokens, the adapter,
    the ReLLaX assembly and the task: the training workers and ``distrec predict``
    (:mod:`distrec.predict.run_model`) build the same model here."""
    from distrec.model.adapters import make_adapter
    from distrec.model.backbone import build_model, load_tokenizer
    from distrec.model.rellax import add_spa_tokens, assemble

    tokenizer = load_tokenizer(job.model)  # also prepares the model folder, outside ZeRO-3 init
    with init_context():
        llm = build_model(job.model)
    if job.trunk_attention:
        from distrec.objectives.shared_prefix import enable_trunk_attention

        enable_trunk_attention(llm)
    backbone_config = llm.config
    add_spa_tokens(job, tokenizer, llm)
    adapter = make_adapter(job.adapter, d_instance=job.crm.hidden_size)
    llm = adapter.attach(llm)
    model, conditioning = assemble(job, llm, tokenizer, adapter, crm_dir, device)
    return CausalLM(tokenizer, llm, adapter, model, make_task(job, tokenizer, device, conditioning), backbone_config)


def build_causal_lm(job, strategy, loop_config: dict) -> Built:
    built = assemble_causal_lm(job, strategy.device, loop_config.get("crm_dir"), strategy.model_init_context)
    tokenizer, llm, adapter, model = built.tokenizer, built.llm, built.adapter, built.model

    def export(run_dir: Path) -> None:
        adapter.export(llm, run_dir / "adapter", strategy.gathered, strategy.is_rank0)
        if hasattr(model, "export_projector"):
            model.export_projector(run_dir / "spa", strategy.gathered, strategy.is_rank0)

    def log_samples(monitor, rows) -> None:
        from distrec.train.data_stream import n_rows, take

        n = min(job.train.prompt_samples_to_log, n_rows(rows))
        rows = take(rows, np.arange(n))
        for i in range(n):
            text = tokenizer.decode(rows["input_ids"][i])
            header = f"label={int(rows['label'][i])}" if "label" in rows else f"sample_id={int(rows['sample_id'][i])}"
            monitor.text("samples/prompt", i, f"{header}\n\n{text}")

    def test_extras(ctx, rows, prepared_dir: Path) -> dict:
        if job.data.task != "generative" or not job.eval.generate:
            return {}
        return grounded_test_metrics(ctx, tokenizer, rows, prepared_dir)

    return Built(model=model, task=built.task, export=export, log_samples=log_samples, test_extras=test_extras,
                 flop_config=built.backbone_config)


def grounded_test_metrics(ctx, tokenizer, rows, prepared_dir: Path) -> dict:
    """Beam search on every test row (``rows``: the split's ``ShardRows``; each rank reads its own
    share), grounded to catalogue items: HR@K / NDCG@K and their intervals; rank 0 writes
    ``predictions_test.parquet``."""
    import pyarrow.parquet as pq

    from distrec.data.prompts import Catalog
    from distrec.data.storage import write_parquet_file
    from distrec.eval.generation import grounded_metrics

    e = ctx.job.eval
    titles = Catalog.for_dataset(ctx.job.data.dataset, pq.read_table(prepared_dir / "items.parquet")).titles
    module = ctx.engine.module
    gathered = ctx.strategy.gathered(module.parameters()) if e.gather_for_generation else contextlib.nullcontext()
    with gathered:
        metrics, examples, ranks, top = grounded_metrics(module, tokenizer, ctx.strategy, rows, dict(titles),
                                                    num_beams=e.num_beams, max_new_tokens=e.max_new_tokens,
                                                    min_new_tokens=e.min_new_tokens, batch_size=e.batch_size,
                                                    mode=e.grounding, ks=e.ks,
                                                    merge_duplicate_titles=e.merge_duplicate_titles)
    ctx.monitor.scalars(0, {f"eval/test_{k}": v for k, v in metrics.items()})
    for i, example in enumerate(examples):
        ctx.monitor.text("samples/generation", i, example)
    if ctx.strategy.is_rank0:
        from distrec.eval.compare import ranking_predictions
        from distrec.eval.intervals import ranking_intervals

        ids = {name: rows.column(name) for name in ("sample_id", "user_id", "item_id")}
        write_parquet_file(ranking_predictions(ids["sample_id"], ids["user_id"], ids["item_id"], ranks, e.ks,
                                               top_item_ids=top), ctx.run_dir / "predictions_test.parquet")
        metrics.update(ranking_intervals(ranks, ids["user_id"], e.ks))
    return metrics
