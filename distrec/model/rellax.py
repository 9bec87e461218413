"""ReLLaX on a worker: SPA's projector around the LLM and the CRM inputs of every batch.

:func:`assemble` turns the adapter-carrying LLM into the module DeepSpeed wraps (the LLM
alone, or :class:`~distrec.model.soft_prompts.SoftPromptLM` when SPA is on) and returns the
:class:`BatchConditioning` the task uses: forward keyword arguments (SPA's embeddings) and a
context that holds CFLoRA's instance representation ``h_u`` over forward *and* backward.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from distrec.config import JobConfig
from distrec.model.crm.features import CrmFeatures


class BatchConditioning:
    """Per-batch inputs the frozen CRM adds: ``kwargs(batch)`` for the forward, ``context(batch)``."""

    def __init__(self, crm: CrmFeatures, spa: bool, instance=None) -> None:
        """``instance``: the CFLoRA adapter's ``instance`` context (generated mode), else None."""
        self.crm, self.spa, self.instance = crm, spa, instance

    def kwargs(self, batch: dict) -> dict:
        return {"spa": self.crm.soft_prompt_inputs(batch)} if self.spa else {}

    def context(self, batch: dict):
        if self.instance is None:
            return contextlib.nullcontext()
        return self.instance(self.crm.instance(batch))


def add_spa_tokens(job: JobConfig, tokenizer, model: torch.nn.Module | None = None) -> None:
    """SPA's placeholder tokens in ``tokenizer`` (and ``model``'s embedding table); no-op without SPA."""
    if job.spa.enabled:
        from distrec.model.soft_prompts import add_placeholder_tokens

        add_placeholder_tokens(tokenizer, model)


def assemble(job: JobConfig, llm: torch.nn.Module, tokenizer, adapter, crm_dir: str | Path | None,
             device: torch.device) -> tuple[torch.nn.Module, BatchConditioning | None]:
    """``(module for DeepSpeed, conditioning or None)``. Build the projector after seeding: its
    initial weights must be identical on every rank."""
    if not job.needs_crm:
        return llm, None
    if crm_dir is None:
        from distrec.errors import ModelError

        raise ModelError("this job needs a trained CRM (spa.enabled or CFLoRA mode 'generated') but none was given")
    crm = CrmFeatures(crm_dir, device)
    if job.cflora_generated and adapter.d_instance != crm.hidden_size:
        from distrec.errors import ModelError

        raise ModelError(f"CFLoRA d_instance={adapter.d_instance} but the CRM in {crm_dir} has hidden_size "
                         f"{crm.hidden_size}; set crm.hidden_size to the saved CRM's")
    module = llm
    if job.spa.enabled:
        from distrec.model.soft_prompts import Projector, SoftPromptLM, placeholder_token_ids

        d_llm = llm.get_input_embeddings().embedding_dim
        module = SoftPromptLM(llm, Projector(crm.embed_dim, d_llm), placeholder_token_ids(tokenizer))
    return module, BatchConditioning(crm, job.spa.enabled, adapter.instance if job.cflora_generated else None)
